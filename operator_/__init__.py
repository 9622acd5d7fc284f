"""flexnpu.operator"""
