"""flexnpu.protos"""
