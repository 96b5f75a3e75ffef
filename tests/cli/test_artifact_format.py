"""The control plane tells a deploy's format from the artifact's content, and refuses a wrong one."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import tarfile
from pathlib import Path

import onnx
import pytest

from agent.cli.main import main
from agent.fleet.artifact import HEAD_BYTES, sniff
from agent.models.bundle import pack_bundle

UNREACHABLE = "mqtt://127.0.0.1:9"
"""No broker: these commands end before they connect."""


def head_of(path: Path) -> tuple[bytes, int]:
    with path.open("rb") as stream:
        return stream.read(HEAD_BYTES), path.stat().st_size


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "text-det-v6.tar"
    pack_bundle(demo_dir / "models" / "text-det-v6", out)
    return out


@pytest.mark.parametrize("model", ["text-det-v4", "text-det-v6", "orientation-0.0.11"])
def test_the_demo_models_read_as_onnx(demo_dir, model):
    path = demo_dir / "models" / model / "model.onnx"
    sniffed = sniff(*head_of(path))
    assert sniffed.format == "onnx"
    ir_version = onnx.load(str(path), load_external_data=False).ir_version
    assert sniffed.description == f"an ONNX model (IR version {ir_version})"


def test_an_onnx_model_is_known_from_its_head_alone_when_the_size_is_unknown(demo_dir):
    head, _ = head_of(demo_dir / "models" / "text-det-v6" / "model.onnx")
    assert sniff(head, None).format == "onnx"


def test_a_cut_onnx_model_is_not_taken_for_one(demo_dir):
    data = (demo_dir / "models" / "text-det-v4" / "model.onnx").read_bytes()[:5000]
    assert sniff(data, len(data)).format is None


def test_a_bundle_reads_as_a_tar_plain_or_compressed(bundle):
    assert sniff(*head_of(bundle)).description == "a tar archive (a bundle)"
    data = bundle.read_bytes()
    # Each format at its fastest level: what the sniffer reads (the magic, the tar header inside) is the same.
    fastest = ((lambda raw: gzip.compress(raw, compresslevel=1), "gzip"),
               (lambda raw: lzma.compress(raw, preset=0), "xz"))
    for compress, name in fastest:
        packed = compress(data)
        sniffed = sniff(packed[:HEAD_BYTES], len(packed))
        assert (sniffed.format, sniffed.description) == ("bundle", f"a {name}-compressed tar archive (a bundle)")


def test_a_tensorrt_plan_reads_as_an_engine():
    plan = b"ftrt" + bytes(256)
    assert sniff(plan, len(plan)).format == "engine"


@pytest.mark.parametrize(("data", "said"), [
    (b"", "an empty file"),
    (b"<html><body>404 Not Found</body></html>\n", "text, not a model (it starts '<html><body>404 Not Found"),
    (b"PK\x03\x04" + bytes(64), "a zip archive"),
    (bytes(range(200, 256)) * 4, "neither a tar bundle, an ONNX model nor a TensorRT engine (it starts c8 c9 ca"),
    (gzip.compress(b"not a tar" * 100, mtime=0), "gzip-compressed data that is not a tar archive"),
])
def test_other_content_is_named(data, said):
    sniffed = sniff(data, len(data))
    assert sniffed.format is None and said in sniffed.description


def _deploy(url: str, *extra: str) -> list[str]:
    return ["deploy", "--broker", UNREACHABLE, "--device", "d", "--name", "text-det", "--version", "v6",
            "--url", url, "--timeout", "1", *extra]


def test_a_wrong_format_is_refused_with_what_the_file_is(demo_dir, capsys):
    model = demo_dir / "models" / "text-det-v6" / "model.onnx"
    with pytest.raises(SystemExit) as exited:
        main(_deploy(model.as_uri(), "--format", "bundle"))
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"--format bundle, but {model.as_uri()} is an ONNX model (IR version 10): use --format onnx" in error


def test_a_file_that_is_no_model_is_refused_before_sending(tmp_path, capsys):
    page = tmp_path / "model.onnx"
    page.write_text("<html>login required</html>")
    with pytest.raises(SystemExit) as exited:
        main(_deploy(page.as_uri()))
    assert exited.value.code == 2
    assert "is text, not a model (it starts '<html>login required</html>')" in capsys.readouterr().err


def test_a_statement_signed_for_another_format_is_refused(tmp_path, capsys):
    statement = tmp_path / "BUNDLE.sig"
    statement.write_text(json.dumps({"format": "bundle", "sha256": "0" * 64}))
    with pytest.raises(SystemExit) as exited:
        main(_deploy("https://models.example/x", "--statement", str(statement), "--format", "onnx"))
    assert exited.value.code == 2
    assert "the statement is signed for bundle" in capsys.readouterr().err


def test_an_artifact_the_cli_cannot_read_goes_by_its_name_else_needs_a_format(tmp_path, capsys):
    from agent.cli.control import artifact_format

    assert artifact_format((tmp_path / "only-on-the-device.tar").as_uri(), None) == "bundle"
    assert "sending it as bundle, by its name" in capsys.readouterr().err
    assert artifact_format((tmp_path / "only-on-the-device.plan").as_uri(), None) == "engine"
    assert artifact_format((tmp_path / "only-on-the-device").as_uri(), "onnx") == "onnx"
    with pytest.raises(SystemExit):
        artifact_format((tmp_path / "only-on-the-device").as_uri(), None)
    assert "to tell its format; give --format" in capsys.readouterr().err


def test_model_sign_signs_the_format_the_content_has(tmp_path, bundle, capsys):
    main(["model", "keygen", str(tmp_path / "ctl")])
    capsys.readouterr()
    assert main(["model", "sign", str(bundle), "--key", str(tmp_path / "ctl.key"), "--name", "text-det",
                 "--version", "v6"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "bundle"


def test_the_tar_check_reads_a_real_tar_header():
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    data = archive.getvalue()
    assert sniff(data, len(data)).format == "bundle"


def test_an_artifact_over_http_is_told_from_its_first_bytes(tmp_path, bundle, capsys):
    from agent.cli.control import artifact_format
    from tests.support.artifacts import ArtifactServer

    (tmp_path / "model.bin").write_bytes(bundle.read_bytes())
    server = ArtifactServer(tmp_path)
    try:
        assert artifact_format(server.url("model.bin"), None) == "bundle"
        with pytest.raises(SystemExit):
            artifact_format(server.url("model.bin"), "onnx")
        assert f"--format onnx, but {server.url('model.bin')} is a tar archive (a bundle)" in capsys.readouterr().err
        assert artifact_format(server.url("absent.tar"), None) == "bundle", "a 404 goes by the name"
    finally:
        server.close()


def test_a_server_with_ranges_sends_only_the_head_and_the_size_it_is_checked_against(demo_dir):
    from agent.cli.control import artifact_format
    from tests.support.http import LoopbackServer, RangeHandler

    # Larger than the head: the ONNX graph field is checked against the size in Content-Range.
    model = (demo_dir / "models" / "text-det-v6" / "model.onnx").read_bytes()
    with LoopbackServer(RangeHandler.serving(model)) as server:
        assert artifact_format(server.url("model"), None) == "onnx"
