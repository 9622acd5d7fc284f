"""The openb reader: every layout the published simulator ships, and a clear error for every malformed file."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexnpu.bench.openb import TraceError, load_nodes, load_pods

NODES = "sn,cpu_milli,memory_mib,gpu,model\na,64000,262144,2,T4\nb,96000,524288,8,V100M16\n"
ELEVEN = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_eleven_column_layout_reads_cpu_memory_cards_and_models(tmp_path: Path) -> None:
    nodes = load_nodes(write(tmp_path, "nodes.csv", NODES))
    pods = load_pods(
        write(
            tmp_path,
            "pods.csv",
            ELEVEN + "p0,6000,12288,1,460,T4|V100M16,LS,Running,0,1,0\n"
            "p1,88000,65536,8,1000,,BE,Failed,0,1,0\n"
            "p2,2000,4096,0,0,,LS,Running,0,1,0\n",
        ),
        nodes,
    )

    assert [(n.name, len(n.cards), n.cpu_milli_total, n.host_memory_mib_total) for n in nodes] == [
        ("a", 2, 64000, 262144),
        ("b", 8, 96000, 524288),
    ]
    assert nodes[1].cards[0].model == "V100M16"
    assert [p.milli for p in pods] == [460, 8000, 0]
    assert pods[0].demand.models == frozenset({"T4", "V100M16"})
    assert (pods[0].demand.cpu_milli, pods[0].demand.host_memory_mib) == (6000, 12288)
    assert pods[1].demand.request.whole_cards == 8
    assert pods[2].demand.request.units == 0


def test_the_five_column_layout_reads(tmp_path: Path) -> None:
    pods = load_pods(write(tmp_path, "pods.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,4000,8192,1,250\n"))

    assert pods[0].milli == 250
    assert pods[0].demand.host_memory_mib == 8192
    assert pods[0].demand.models == frozenset()


def test_a_layout_without_memory_tracks_none(tmp_path: Path) -> None:
    text = "name,cpu_milli,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
    pods = load_pods(write(tmp_path, "nomem.csv", text + "p0,12000,1,1000,,LS,Running,0,1,0\n"))

    assert pods[0].demand.host_memory_mib == 0
    assert pods[0].demand.cpu_milli == 12000


@pytest.mark.parametrize(("text", "line", "column", "words"), [
    ("name,cpu_milli,num_gpu,gpu_milli,colour\np,1,1,1,red\n", 1, "colour", "unknown column"),
    ("name,cpu_milli,num_gpu\np,1,1\n", 1, "gpu_milli", "missing"),
    ("name,cpu_milli,num_gpu,gpu_milli\np,1,1,1\nq,-5,1,1\n", 3, "cpu_milli", "negative"),
    ("name,cpu_milli,num_gpu,gpu_milli\np,1e9,1,1\n", 2, "cpu_milli", "whole number"),
    ("name,cpu_milli,num_gpu,gpu_milli\np,99999999999,1,1\n", 2, "cpu_milli", "larger than any machine"),
    ("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1,99999999999999,1,1\n", 2, "memory_mib", "larger"),
    ("name,cpu_milli,num_gpu,gpu_milli\np,1,1000,1000\n", 2, "num_gpu", "larger"),
    ("name,cpu_milli,num_gpu,gpu_milli\np,1,1,1001\n", 2, "gpu_milli", "larger"),
    ("name,cpu_milli,num_gpu,gpu_milli\np,1,2,500\n", 2, "gpu_milli", "several whole cards"),
    ("name,cpu_milli,num_gpu,gpu_milli\np,1,0,500\n", 2, "gpu_milli", "without cards"),
    ("name,cpu_milli,num_gpu,gpu_milli\np,1,1,0\n", 2, "gpu_milli", "above 0"),
    ("name,cpu_milli,num_gpu,gpu_milli\np,1,1\n", 2, "num_gpu", "columns"),
    ("name,cpu_milli,num_gpu,gpu_milli,gpu_spec\np,1,1,100,A100\n", 2, "gpu_spec", "no node"),
    ("name,cpu_milli,num_gpu,gpu_milli\n", 1, "name", "no pod"),
])  # fmt: skip
def test_a_malformed_pod_list_names_file_line_and_column(
    tmp_path: Path, text: str, line: int, column: str, words: str
) -> None:
    nodes = load_nodes(write(tmp_path, "nodes.csv", NODES))
    path = write(tmp_path, "openb_pod_list_bad.csv", text)

    with pytest.raises(TraceError) as caught:
        load_pods(path, nodes)

    assert (caught.value.path, caught.value.line, caught.value.column) == (path, line, column)
    message = str(caught.value)
    assert message.startswith(f"openb_pod_list_bad.csv line {line}, column {column}")
    assert words in message


@pytest.mark.parametrize(("text", "line", "column", "words"), [
    ("sn,cpu_milli,memory_mib,gpu,model\na,1,1,2,T4\na,1,1,2,T4\n", 3, "sn", "listed before"),
    ("sn,cpu_milli,memory_mib,gpu,model\na,1,1,2,\n", 2, "model", "card model"),
    ("sn,cpu_milli,memory_mib,gpu,model\na,1,1,-2,T4\n", 2, "gpu", "negative"),
    ("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1,1,1,1\n", 1, "name", "unknown column"),
])  # fmt: skip
def test_a_node_list_that_does_not_match_is_refused(
    tmp_path: Path, text: str, line: int, column: str, words: str
) -> None:
    path = write(tmp_path, "openb_node_list_gpu_node.csv", text)

    with pytest.raises(TraceError) as caught:
        load_nodes(path)

    assert (caught.value.line, caught.value.column) == (line, column)
    assert words in str(caught.value)


def test_bytes_that_are_not_text_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nodes.csv"
    path.write_bytes(b"sn,cpu_milli,gpu\n\xff\xfe,1,1\n")

    with pytest.raises(TraceError, match=r"nodes\.csv.*UTF-8"):
        load_nodes(path)


@pytest.mark.parametrize("variant", ["default", "gpushare40", "gpuspec20"])
def test_the_shipped_files_read(variant: str) -> None:
    data = Path(__file__).resolve().parents[3] / "shared" / "data" / "openb"
    if not data.is_dir():
        pytest.skip("the openb files are not next to this checkout")
    nodes = load_nodes(data / "openb_node_list_gpu_node.csv")
    pods = load_pods(data / f"openb_pod_list_{variant}.csv", nodes)

    assert len(nodes) == 1213 and sum(len(n.cards) for n in nodes) == 6212
    assert len(pods) > 8000
