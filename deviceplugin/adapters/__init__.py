"""Adapters of the device plugin added beside flexnpu.deviceplugin.kube: each talks to one outside system."""
