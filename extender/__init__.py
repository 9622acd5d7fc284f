"""flexnpu.extender"""
