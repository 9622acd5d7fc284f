"""flexnpu.bench"""
