"""docker-compose.yaml against the Compose specification's JSON schema, read as Compose reads it.

The schema is compose-spec's own ``compose-spec.json`` as the npm package dclint 3.1.0 ships it
(byte-for-byte compose-spec's schema of 2025-07-21: models, provider, ``env_file`` entries with
``path``/``required``); PyPI's docker-compose 1.29.2 has one from 2021 that refuses ``env_file``
entries. The package is fetched once with npm into ``test-artifacts/`` (ignored); the validator is
jsonschema, pinned in constraints.txt. Compose validates after resolving YAML merge keys and
interpolating ``${VAR}`` forms from ``.env``: so do these tests, from ``.env.example``.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from test_compose import env_example

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PACKAGE = "dclint@3.1.0"
SCHEMA_MEMBER = "package/schemas/compose.schema.json"
CACHE = ROOT / "test-artifacts" / "compose-spec"
# The two secrets .env.example leaves for the user to generate (compose refuses to start without).
USER_SECRETS = {
    "AIRFLOW__CORE__FERNET_KEY": "fernet-key-as-generated",
    "AIRFLOW__API_AUTH__JWT_SECRET": "jwt-secret-as-generated",
    "AIRFLOW__API__SECRET_KEY": "api-secret-key-as-generated",
}
# $$, $VAR, ${VAR} and ${VAR<op>argument} with op one of :- - :? ? :+ + (Compose's forms).
_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>\w+))"
)


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` (or ``${VAR?message}``) whose variable is missing."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """One string as Compose substitutes it: ``:`` forms treat an empty value as unset."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["name"] or match["bare"], match["op"], match["arg"] or ""
        if "$" in arg:
            raise ValueError(f"nested interpolation is not handled here: {match[0]}")
        value = env.get(name)
        present = bool(value) if op and op.startswith(":") else value is not None
        if op in (":-", "-"):
            return value if present and value is not None else arg
        if op in (":?", "?"):
            if not present:
                raise MissingVariable(f"{name}: {arg}")
            return str(value)
        if op in (":+", "+"):
            return arg if present else ""
        return value or ""

    return _REFERENCE.sub(substitute, text)


def interpolated(node: Any, env: Mapping[str, str]) -> Any:
    """Every string value of a loaded compose file interpolated (keys are left as written)."""
    if isinstance(node, dict):
        return {key: interpolated(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolated(item, env) for item in node]
    return interpolate(node, env) if isinstance(node, str) else node


def _fetch_schema(target: Path) -> None:
    npm = shutil.which("npm")
    assert npm, "npm (Node.js) is needed to fetch the Compose schema: apt-get install npm"
    download = target.parent / "download"
    download.mkdir(parents=True, exist_ok=True)
    packed = subprocess.run(
        [npm, "pack", SCHEMA_PACKAGE, "--pack-destination", str(download), "--silent"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()[-1]
    with tarfile.open(download / packed) as archive:
        member = archive.extractfile(SCHEMA_MEMBER)
        assert member, f"{SCHEMA_PACKAGE} has no {SCHEMA_MEMBER}"
        partial = target.with_suffix(".partial")
        partial.write_bytes(member.read())
    partial.replace(target)  # a reader never sees half a schema


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    target = CACHE / f"{SCHEMA_PACKAGE.replace('@', '-')}.json"
    if not target.exists():
        _fetch_schema(target)
    schema = json.loads(target.read_text())
    assert schema["title"] == "Compose Specification"
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def user_env() -> dict[str, str]:
    """``.env`` as the user fills it in from ``.env.example``: the secrets generated."""
    return {**env_example(), **USER_SECRETS}


@pytest.fixture(scope="module")
def loaded() -> dict[str, Any]:
    # safe_load resolves the file's anchors and `<<` merge keys, as Compose does.
    return dict(yaml.safe_load((ROOT / "docker-compose.yaml").read_text()))


def errors(validator: jsonschema.Draft7Validator, document: Any) -> list[str]:
    found = validator.iter_errors(document)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found]


def test_the_compose_file_is_valid_compose(
    validator: jsonschema.Draft7Validator, loaded: dict[str, Any], user_env: dict[str, str]
) -> None:
    document = interpolated(loaded, user_env)
    assert errors(validator, document) == []
    common = document["services"]["airflow-scheduler"]["environment"]
    assert common["AIRFLOW__CORE__FERNET_KEY"] == USER_SECRETS["AIRFLOW__CORE__FERNET_KEY"]
    assert document["services"]["airflow-worker-gpu"]["image"] == user_env["AIRFLOW_GPU_IMAGE_NAME"]
    healthcheck = document["services"]["airflow-triggerer"]["healthcheck"]["test"][1]
    assert '"${HOSTNAME}"' in healthcheck  # `$$` leaves `$` for the container's shell


def test_the_production_auth_manager_is_valid_compose_too(
    validator: jsonschema.Draft7Validator, loaded: dict[str, Any], user_env: dict[str, str]
) -> None:
    fab = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
    document = interpolated(loaded, {**user_env, "AIRFLOW__CORE__AUTH_MANAGER": fab})
    assert errors(validator, document) == []
    assert document["services"]["airflow-init"]["environment"]["AIRFLOW__CORE__AUTH_MANAGER"] == fab


def test_a_broken_compose_file_is_refused(
    validator: jsonschema.Draft7Validator, loaded: dict[str, Any], user_env: dict[str, str]
) -> None:
    document = interpolated(loaded, user_env)
    unknown_key = copy.deepcopy(document)
    unknown_key["services"]["airflow-worker"]["restart_policy"] = "always"  # deploy's, not here
    assert any("restart_policy" in e for e in errors(validator, unknown_key))
    wrong_type = copy.deepcopy(document)
    (device,) = wrong_type["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"]
    device["capabilities"] = "gpu"  # a list of strings in the spec
    assert any("capabilities" in e for e in errors(validator, wrong_type))
    bad_condition = copy.deepcopy(document)
    bad_condition["services"]["airflow-init"]["depends_on"]["postgres"]["condition"] = "ready"
    assert any("condition" in e for e in errors(validator, bad_condition))


def test_interpolation_follows_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${UNSET:-d} ${EMPTY-d} ${UNSET-d}", env) == "x d d  d"
    assert interpolate("$$HOSTNAME $${X} $SET ${SET}", env) == "$HOSTNAME ${X} x x"
    assert interpolate("${SET:+on} ${EMPTY:+on} ${EMPTY+on} ${UNSET+on}", env) == "on  on "
    assert interpolate("${EMPTY?required}", env) == ""
    for reference in ("${EMPTY:?required}", "${UNSET:?required}", "${UNSET?required}"):
        with pytest.raises(MissingVariable, match="required"):
            interpolate(reference, env)


def test_compose_refuses_to_start_without_the_secrets(loaded: dict[str, Any]) -> None:
    # .env.example as committed: the secrets are empty, and `${VAR:?...}` stops compose.
    with pytest.raises(MissingVariable, match="AIRFLOW__CORE__FERNET_KEY|AIRFLOW__API"):
        interpolated(loaded, env_example())
