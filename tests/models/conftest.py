"""The models tests' fixtures: an HTTP server for the artifacts a deploy downloads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.artifacts import ArtifactServer


@pytest.fixture
def server(tmp_path) -> Iterator[ArtifactServer]:
    """Serves the files put in ``server.root`` (``tmp_path/www``) over HTTP; closed after the test."""
    root = tmp_path / "www"
    root.mkdir()
    srv = ArtifactServer(root)
    yield srv
    srv.close()
