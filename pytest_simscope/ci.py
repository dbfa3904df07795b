"""Defaults read from common CI environments (GitHub Actions, GitLab CI, Jenkins, Buildkite).

They fill settings the user did not set: the commit as ``model_version``, the branch as
``model_branch`` and the build's URL and number as regression metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CiDefaults:
    """What a CI system tells about the build; ``system`` is empty outside CI."""

    system: str = ""
    values: dict[str, str] = field(default_factory=dict)
    #: The environment variable each value came from, for the ``-v`` header.
    origins: dict[str, str] = field(default_factory=dict)
    metadata: list[tuple[str, str]] = field(default_factory=list)


def _first(env: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def detect_ci(env: Mapping[str, str]) -> CiDefaults:
    """Read the CI system's variables from *env* (``os.environ`` in the plugin)."""
    if env.get("GITHUB_ACTIONS") == "true":
        system = "GitHub Actions"
        commit = _first(env, "GITHUB_SHA")
        branch = _first(env, "GITHUB_HEAD_REF", "GITHUB_REF_NAME")
        number = _first(env, "GITHUB_RUN_NUMBER")
        url = None
        server, repo, run = (
            env.get("GITHUB_SERVER_URL"),
            env.get("GITHUB_REPOSITORY"),
            env.get("GITHUB_RUN_ID"),
        )
        if server and repo and run:
            url = ("GITHUB_SERVER_URL", f"{server}/{repo}/actions/runs/{run}")
    elif env.get("GITLAB_CI") == "true":
        system = "GitLab CI"
        commit = _first(env, "CI_COMMIT_SHA")
        branch = _first(env, "CI_COMMIT_REF_NAME", "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME")
        number = _first(env, "CI_PIPELINE_IID", "CI_PIPELINE_ID")
        url = _first(env, "CI_JOB_URL", "CI_PIPELINE_URL")
    elif env.get("BUILDKITE") == "true":
        system = "Buildkite"
        commit = _first(env, "BUILDKITE_COMMIT")
        branch = _first(env, "BUILDKITE_BRANCH")
        number = _first(env, "BUILDKITE_BUILD_NUMBER")
        url = _first(env, "BUILDKITE_BUILD_URL")
    elif env.get("JENKINS_URL") or env.get("JENKINS_HOME"):
        system = "Jenkins"
        commit = _first(env, "GIT_COMMIT")
        branch = _first(env, "CHANGE_BRANCH", "BRANCH_NAME", "GIT_BRANCH")
        number = _first(env, "BUILD_NUMBER")
        url = _first(env, "BUILD_URL")
    else:
        return CiDefaults()

    values: dict[str, str] = {}
    origins: dict[str, str] = {}
    for setting, found in (("model_version", commit), ("model_branch", branch)):
        if found:
            origins[setting], values[setting] = found
    metadata = [("ci_system", system)]
    if url:
        metadata.append(("ci_build_url", url[1]))
    if number:
        metadata.append(("ci_build_number", number[1]))
    return CiDefaults(system=system, values=values, origins=origins, metadata=metadata)
