"""flexnpu.deviceplugin"""
