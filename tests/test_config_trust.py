"""A project file is not a trust decision: ./llmctl.toml may not turn on remote code or send the API key
elsewhere unless the user trusted that folder themselves (`llmctl config trust`). Real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HOSTILE = """model = "openai:gpt-4o-mini"
[hf]
trust_remote_code = true
[openai]
base_url = "http://127.0.0.1:9/v1"
timeout = 5
[trust]
projects = ["."]
"""


def run_llmctl(cwd: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMCTL_", "OPENAI_"))}
    env.update(LLMCTL_HOME=str(home), OPENAI_API_KEY="sk-test-not-real", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "llmctl", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def show(cwd: Path, home: Path) -> tuple[dict, str]:
    r = run_llmctl(cwd, home, "config", "show", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r.stderr


def test_untrusted_project_file_cannot_grant_trust_or_route_the_key(tmp_path):
    repo, home = tmp_path / "cloned-repo", tmp_path / "home"
    repo.mkdir()
    (repo / "llmctl.toml").write_text(HOSTILE)
    doc, stderr = show(repo, home)
    assert doc["hf.trust_remote_code"]["value"] is False and doc["openai.base_url"]["value"] is None
    assert doc["trust.projects"]["value"] == []  # a project cannot vouch for itself
    for key in ("hf.trust_remote_code", "openai.base_url", "trust.projects"):
        assert "not trusted" in doc[key]["ignored"] and doc[key]["source"] == "default"
    # harmless settings still come from the project file
    assert doc["model"]["value"] == "openai:gpt-4o-mini" and doc["openai.timeout"]["source"].endswith("llmctl.toml")
    assert stderr.count("warning:") == 3 and "not applied" in stderr


def test_trusting_the_folder_applies_it_and_removing_trust_undoes_it(tmp_path):
    repo, home = tmp_path / "mine", tmp_path / "home"
    repo.mkdir()
    (repo / "llmctl.toml").write_text(HOSTILE.replace('[trust]\nprojects = ["."]\n', ""))
    trusted = run_llmctl(repo, home, "config", "trust", "--json")
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout)["projects"] == [str(repo.resolve())]
    assert str(repo.resolve()) in (home / "config.toml").read_text()  # in the user's own file
    doc, stderr = show(repo, home)
    assert doc["hf.trust_remote_code"]["value"] is True and doc["openai.base_url"]["value"] == "http://127.0.0.1:9/v1"
    assert "ignored" not in doc["hf.trust_remote_code"] and "warning" not in stderr
    # another folder with the same file is still not trusted
    other = tmp_path / "other"
    other.mkdir()
    (other / "llmctl.toml").write_text((repo / "llmctl.toml").read_text())
    assert show(other, home)[0]["hf.trust_remote_code"]["value"] is False
    assert run_llmctl(repo, home, "config", "trust", "--remove").returncode == 0
    assert show(repo, home)[0]["hf.trust_remote_code"]["value"] is False


def test_user_file_config_flag_and_env_keep_working(tmp_path):
    repo, home = tmp_path / "repo", tmp_path / "home"
    repo.mkdir()
    home.mkdir()
    (home / "config.toml").write_text('[openai]\nbase_url = "http://127.0.0.1:7/v1"\n')
    assert show(repo, home)[0]["openai.base_url"]["value"] == "http://127.0.0.1:7/v1"
    explicit = tmp_path / "chosen.toml"
    explicit.write_text("[hf]\ntrust_remote_code = true\n")
    r = run_llmctl(repo, home, "--config", str(explicit), "config", "get", "hf.trust_remote_code")
    assert r.returncode == 0 and r.stdout.strip() == "true"
    # a file passed with --config is the user's choice even when it is ./llmctl.toml
    (repo / "llmctl.toml").write_text("[hf]\ntrust_remote_code = true\n")
    r = run_llmctl(repo, home, "--config", "llmctl.toml", "config", "get", "hf.trust_remote_code")
    assert r.stdout.strip() == "true", r.stderr


def test_trust_a_missing_folder_is_a_usage_error(tmp_path):
    r = run_llmctl(tmp_path, tmp_path / "home", "config", "trust", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and r.stderr.startswith("error:") and "not a folder" in r.stderr


def test_user_data_is_private(tmp_path):
    """The log (every prompt and answer), the registry and the user config are owner-only, the home too."""
    home = tmp_path / "home"
    for args in (["models", "add", "m", "openai:gpt-4o-mini"], ["config", "set", "sampling.temperature", "0.3"]):
        assert run_llmctl(tmp_path, home, *args).returncode == 0
    from llmctl.logs import LogStore

    LogStore(home / "logs.db")
    modes = {p.name: p.stat().st_mode & 0o777 for p in home.iterdir() if not p.name.endswith(".lock")}
    assert (home.stat().st_mode & 0o777) == 0o700
    assert modes["logs.db"] == 0o600 and modes["registry.json"] == 0o600 and modes["config.toml"] == 0o600, modes
