"""End to end against the real Triton Inference Server (the `tritonserver` binary PyPI's nvidia-pytriton ships), on
loopback, on the `--platform python` repository: predictions over HTTP and gRPC equal the embedded runtime's on the
same inputs, and a client gets clear errors. The server runs in its own Python environment (build/triton_env, which
`make test` creates: Triton's Python backend stub needs numpy<2); the test starts the server and stops it."""

import dataclasses
import platform
import subprocess
import threading

import cv2
import numpy as np
import pytest

from tests.layers import ROOT

pytest.importorskip("tritonclient.http", reason="needs fusionrt[triton] (tritonclient)")

SERVER_ENV = ROOT / "build" / "triton_env"


def _server_can_run() -> None:
    from fusionrt.serving.tritonserver import find_tritonserver

    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip(f"nvidia-pytriton's tritonserver runs on Linux x86_64 only, this is {platform.system()} "
                    f"{platform.machine()}")
    home = find_tritonserver(SERVER_ENV)  # a missing environment fails: `make test` builds it
    probe = subprocess.run([str(home / "bin" / "tritonserver"), "--help"], capture_output=True, text=True, timeout=60,
                           env={"LD_LIBRARY_PATH": str(home.parents[1] / "nvidia_pytriton.libs")})
    if "--model-repository" not in probe.stdout + probe.stderr:
        pytest.skip(f"the tritonserver binary cannot run here: {(probe.stderr or probe.stdout)[-300:]}")


@pytest.fixture(scope="module")
def served(calibrated, tmp_path_factory):
    """(server, bundle, repository summary, samples) with Triton serving the calibrated tiny bundle."""
    from fusionrt.data.dataset import LabeledDataset
    from fusionrt.serving.repository import RepositoryOptions, write_repository
    from fusionrt.serving.tritonserver import TritonServer

    _server_can_run()
    repo = tmp_path_factory.mktemp("triton") / "repo"
    summary = write_repository(calibrated[0], repo, RepositoryOptions(platform="python", max_batch=8, threads=1,
                                                                      queue_delay_us=2000, seq_bucket=8))
    samples = LabeledDataset.read(calibrated[3]).head(8)
    with TritonServer(repo, SERVER_ENV) as server:
        yield server, calibrated[0], summary, samples
    assert server.process.poll() is not None  # stopped, with its Python stubs


def _embedded(bundle, summary, samples):
    from fusionrt.runtime.pipeline import Pipeline

    with Pipeline.load(bundle, backend="onnxruntime", precision=summary["precision"]) as pipe:
        return [pipe.classify(cv2.imread(str(s.image)), s.text) for s in samples]


def _same(got, want) -> None:
    assert [p.label for p in got] == [p.label for p in want]
    np.testing.assert_allclose(np.stack([p.probs for p in got]), np.stack([p.probs for p in want]), atol=2e-5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_predictions_equal_the_embedded_runtimes(served, protocol):
    from fusionrt.client import TritonClient

    server, bundle, summary, samples = served
    url = server.http_url if protocol == "http" else server.grpc_url
    want = _embedded(bundle, summary, samples)
    with TritonClient(url, protocol=protocol, bundle=bundle) as client:
        one_by_one = [client.classify(s.image, s.text) for s in samples]  # file bytes, as a camera app would send
        frames = [cv2.imread(str(s.image)) for s in samples]
        batched = client.classify_batch(frames, [s.text for s in samples])  # BGR frames, encoded as PNG
    _same(one_by_one, want)
    _same(batched, want)


def _preprocess_counts(server) -> tuple:
    import tritonclient.http

    stats = tritonclient.http.InferenceServerClient(server.http_url).get_inference_statistics("preprocess")
    counts = stats["model_stats"][0]
    return counts["execution_count"], counts["inference_count"]


def _at_once(count: int, ask) -> list:
    """ask(i) on `count` threads released together; each one's result or exception."""
    barrier, results = threading.Barrier(count), [None] * count

    def run(i):
        barrier.wait()
        try:
            results[i] = ask(i)
        except Exception as exc:  # noqa: BLE001 - returned for the test to check
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_concurrent_clients_get_their_own_answers(served):
    """Requests from several threads released at once: the dynamic batcher merges some of them (texts of different
    lengths among them), and every client still gets the prediction for its own pair."""
    from fusionrt.client import TritonClient

    server, bundle, summary, samples = served
    want = _embedded(bundle, summary, samples)
    executions, inferences = _preprocess_counts(server)

    def ask(i):
        with TritonClient(server.grpc_url, protocol="grpc") as client:
            return [client.classify(samples[i].image, samples[i].text) for _ in range(3)]

    got = _at_once(len(samples), ask)
    assert not [g for g in got if isinstance(g, Exception)], got
    for round_ in range(3):
        _same([g[round_] for g in got], want)
    executions_now, inferences_now = _preprocess_counts(server)
    assert inferences_now - inferences == 3 * len(samples)  # these requests, one image each
    assert executions_now - executions < inferences_now - inferences  # and some of them ran as one batch


def test_a_bomb_and_a_huge_caption_among_good_requests_fail_or_answer_alone(served):
    """At once: good requests, a 100 MP PNG of ~100 KB and a 10 MB caption. Only the bomb fails (refused from its
    header: the server stays small and goes on); the caption answers as its first words do; the rest as embedded."""
    from fusionrt.client import ServingError, TritonClient
    from tests.bad_inputs import huge_text, png_bomb

    server, bundle, summary, samples = served
    good = samples[:4]
    want = _embedded(bundle, summary, good)
    text = huge_text(10)
    words = " ".join(text.split(None, 300)[:300])  # more words than 128 tokens use
    [first_words] = _embedded(bundle, summary, [dataclasses.replace(good[0], text=words)])
    bomb = png_bomb(10_000, 10_000)
    pairs = [(s.image, s.text) for s in good] + [(bomb, "a red circle"), (good[0].image, text)]

    def ask(i):
        with TritonClient(server.http_url, timeout_s=60) as client:
            return client.classify(*pairs[i])

    got = _at_once(len(pairs), ask)
    _same(got[:4], want)
    assert isinstance(got[4], ServingError) and "more than the cap of 64,000,000" in str(got[4])
    _same([got[5]], [first_words])
    with TritonClient(server.http_url) as client:  # and the server goes on
        _same([client.classify(good[1].image, good[1].text)], want[1:2])


def test_clear_errors_for_a_missing_model_a_wrong_model_and_a_bad_request(served, tiny_bundle, tmp_path):
    import dataclasses

    from fusionrt.client import ServingError, TritonClient
    from fusionrt.runtime.bundle import Bundle

    server, bundle, _, samples = served
    with pytest.raises(ServingError, match=r"no ready model 'nope'.*fusionrt"):
        TritonClient(server.http_url, model="nope")
    with pytest.raises(ServingError, match="expected .*IMAGE"):
        TritonClient(server.http_url, model="image_encoder")
    other = Bundle.open(tiny_bundle)
    relabelled = dataclasses.replace(other.manifest, labels=tuple(reversed(other.manifest.labels)))
    with pytest.raises(ServingError, match="serves another model"):
        TritonClient(server.grpc_url, protocol="grpc", bundle=Bundle(other.root, relabelled))
    with TritonClient(server.http_url) as client:
        with pytest.raises(ServingError, match="could not be decoded"):
            client.classify(b"these bytes are no image", "a red circle")
        assert client.classify(samples[0].image, samples[0].text).label  # the server goes on


def test_unreachable_server_is_a_clear_error():
    import socket

    from fusionrt.client import ServingError, TritonClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket closes
    for protocol in ("http", "grpc"):
        with pytest.raises(ServingError, match="could not reach Triton|refused"):
            TritonClient(f"127.0.0.1:{port}", protocol=protocol, timeout_s=2)


@pytest.fixture(scope="module")
def plain_repository(tiny_bundle, tmp_path_factory):
    from fusionrt.serving.repository import RepositoryOptions, write_repository

    _server_can_run()
    repo = tmp_path_factory.mktemp("plain") / "repo"
    write_repository(tiny_bundle, repo, RepositoryOptions(platform="python", threads=1))
    return repo


def test_ports_taken_between_picking_and_binding_are_picked_again(plain_repository, monkeypatch):
    """The first pair it picks is taken by someone else before the server binds it: the server starts on the next."""
    import socket

    from fusionrt.serving import tritonserver

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    picks = []
    real = tritonserver._free_ports

    def first_pick_is_taken(count):
        picks.append(real(count) if picks else [taken, real(1)[0]])
        return picks[-1]

    monkeypatch.setattr(tritonserver, "_free_ports", first_pick_is_taken)
    try:
        with tritonserver.TritonServer(plain_repository, SERVER_ENV) as server:
            assert len(picks) == 2 and server.http_port != taken
            import urllib.request

            assert urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=5).status == 200
        with pytest.raises(tritonserver.ServerError, match=f"http {taken}.*in use by another process"):
            tritonserver.TritonServer(plain_repository, SERVER_ENV, http_port=taken).start()  # a port you chose: said
    finally:
        squatter.close()


def test_a_failed_start_leaves_no_log_or_scratch_folder(plain_repository, tmp_path, monkeypatch):
    import tempfile

    from fusionrt.serving import tritonserver

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    server = tritonserver.TritonServer(plain_repository, SERVER_ENV)
    monkeypatch.setattr(server, "_backends", lambda: (_ for _ in ()).throw(OSError("no space left on device")))
    with pytest.raises(OSError, match="no space left"):
        server.start()
    assert not list(tmp_path.glob("fusionrt-triton-*")) and server.process is None


def test_a_killed_owner_takes_its_server_with_it(plain_repository):
    """SIGKILL the process that started Triton (as a test runner or app killed mid-run): the server goes too."""
    import os
    import sys
    import textwrap
    import time

    script = textwrap.dedent(f"""
        import time
        from fusionrt.serving.tritonserver import TritonServer
        server = TritonServer({str(plain_repository)!r}, {str(SERVER_ENV)!r}).start()
        print(server.process.pid, flush=True)
        time.sleep(600)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid = int(owner.stdout.readline())
    owner.kill()
    owner.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, 9)
        pytest.fail(f"tritonserver {pid} outlived its owner by 30 s")
