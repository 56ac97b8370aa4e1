"""``factory submit`` never uploads secrets: they are excluded wherever they lie in the working
directory, and a job that needs one of them as a file is refused. Ray's own matchers, no
cluster."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from factory.deploy.ray_jobs import EXCLUDES, SECRETS, JobsError, _upload_excludes, _uploaded

SECRET_FILES = (".env", ".env.prod", "tls/server.pem", "sub/api.key", "id_rsa", "id_rsa.pub",
                ".aws/credentials", ".ssh/config", ".gcloud/key.json",
                "home/.config/gcloud/application_default_credentials.json", ".netrc",
                ".git-credentials", "certs/client.p12")
KEPT_FILES = ("job.yaml", "catalog.csv", "keys/readme.txt", "envs/prod.yaml", "env.py")


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    for rel in SECRET_FILES + KEPT_FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    return tmp_path


def _job(manifest: str = "catalog.csv") -> SimpleNamespace:
    return SimpleNamespace(source="job.yaml", output=SimpleNamespace(uri="s3://bucket/out"),
                           manifest_uri=manifest)


@pytest.mark.parametrize("rel", SECRET_FILES)
def test_secrets_are_never_uploaded(folder, rel):
    excludes = _upload_excludes(_job(), folder, "job.yaml")
    assert set(SECRETS) <= set(excludes)
    assert not _uploaded(folder, Path(rel), excludes)


@pytest.mark.parametrize("rel", KEPT_FILES)
def test_other_files_are_uploaded(folder, rel):
    assert _uploaded(folder, Path(rel), _upload_excludes(_job(), folder, "job.yaml"))


@pytest.mark.parametrize("manifest", [".env", ".aws/credentials", "tls/server.pem",
                                      "sub/api.key"])
def test_a_job_that_needs_a_secret_is_refused(folder, manifest):
    with pytest.raises(JobsError, match="never uploads those"):
        _upload_excludes(_job(manifest), folder, "job.yaml")


def test_a_spec_kept_among_secrets_is_refused(folder):
    (folder / ".ssh" / "job.yaml").write_text("x")
    with pytest.raises(JobsError, match=r"\.ssh/job\.yaml is where secrets are kept"):
        _upload_excludes(_job(), folder, ".ssh/job.yaml")


def test_the_weights_and_build_excludes_stay():
    assert {".venv", ".git", "*.safetensors", "*.pt"} <= set(EXCLUDES)
