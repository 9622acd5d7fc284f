import json, time
import pytest
from kubernetes import client as k8s
pytestmark = [pytest.mark.realk8s]
def test_debug(flexnpu_stack, core, api):
    time.sleep(5)
    p = core.read_namespaced_pod(f"flexnpu-node-{flexnpu_stack.cluster.node_name}", "flexnpu-system")
    print(json.dumps(api.sanitize_for_serialization(p), indent=1)[:6000])
    print(flexnpu_stack.daemon_get("/device/flexnpu-info"))
    assert False
