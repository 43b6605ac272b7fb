"""No code path that reads data, checkpoints or messages may run code hidden in those bytes.

The scan walks the syntax tree of every module in model/, stream/ and scripts/ and refuses calls that
deserialise with code execution (pickle, torch.load, numpy's allow_pickle, pandas' read_pickle, yaml.load
without a safe loader, marshal, shelve, joblib, dill, eval / exec). The one unpickler allowed is
model/data/safe_pickle.py's, which must keep refusing every global and persistent id (its payload tests are in
tests/model/test_safe_pickle.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("model", "stream", "scripts")
SAFE_UNPICKLER = Path("model/data/safe_pickle.py")

FORBIDDEN_CALLS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "_pickle.load",
    "_pickle.loads",
    "cPickle.load",
    "torch.load",
    "torch.serialization.load",
    "pd.read_pickle",
    "pandas.read_pickle",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "joblib.load",
    "dill.load",
    "dill.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "eval",
    "exec",
}
FORBIDDEN_IMPORTS = {"dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def violations(source: str, path: Path) -> list[str]:
    """Each unsafe deserialisation in one module, as 'path:line: what'."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] in FORBIDDEN_IMPORTS:
                    found.append(f"{path}:{node.lineno}: imports {name}")
            if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "torch", "pandas"):
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in FORBIDDEN_CALLS or alias.name == "load":
                        found.append(f"{path}:{node.lineno}: from {node.module} import {alias.name}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        if name in FORBIDDEN_CALLS and not (path == SAFE_UNPICKLER and name == "pickle.Unpickler"):
            found.append(f"{path}:{node.lineno}: calls {name}")
        allow_pickle = keywords.get("allow_pickle")
        if isinstance(allow_pickle, ast.Constant) and allow_pickle.value is True:
            found.append(f"{path}:{node.lineno}: {name}(allow_pickle=True)")
        if (
            name in ("yaml.load", "yaml.load_all")
            and "safe" not in ast.unparse(keywords.get("Loader", ast.Constant(""))).lower()
        ):
            found.append(f"{path}:{node.lineno}: {name} without a safe loader")
    return found


def _modules() -> list[Path]:
    return sorted(p.relative_to(ROOT) for d in SCANNED for p in (ROOT / d).rglob("*.py"))


def test_the_scanner_catches_each_unsafe_pattern():
    planted = {
        "import pickle\npickle.loads(b)": "pickle.loads",
        "import torch\ntorch.load(f)": "torch.load",
        "import numpy as np\nnp.load(f, allow_pickle=True)": "allow_pickle",
        "import pandas as pd\npd.read_pickle(f)": "read_pickle",
        "import yaml\nyaml.load(s, Loader=yaml.Loader)": "safe loader",
        "eval(message)": "eval",
        "import joblib": "joblib",
        "from pickle import loads": "from pickle",
    }
    for source, what in planted.items():
        found = violations(source, Path("planted.py"))
        assert found and what in found[0], (source, found)
    assert violations("import yaml\nyaml.load(s, Loader=yaml.SafeLoader)\nnp.load(f)", Path("ok.py")) == []


def test_no_module_deserialises_untrusted_bytes_with_code_execution():
    modules = _modules()
    assert len(modules) > 30 and SAFE_UNPICKLER in modules  # the scan really walks the product
    found = [v for path in modules for v in violations((ROOT / path).read_text(), path)]
    assert not found, "\n".join(found)


def test_the_one_unpickler_refuses_every_global_and_persistent_id():
    tree = ast.parse((ROOT / SAFE_UNPICKLER).read_text())
    unpicklers = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and any(_dotted(b) == "pickle.Unpickler" for b in node.bases)
    ]
    assert len(unpicklers) == 1
    methods = {f.name: f for f in unpicklers[0].body if isinstance(f, ast.FunctionDef)}
    assert {"find_class", "persistent_load"} <= set(methods)
    for name in ("find_class", "persistent_load"):  # both end in a raise, never a lookup
        assert any(isinstance(n, ast.Raise) for n in ast.walk(methods[name]))
        assert not any(isinstance(n, ast.Return) for n in ast.walk(methods[name]))


def test_sasl_and_ssl_settings_pass_through_from_the_environment(monkeypatch):
    import faust

    from stream.kafka.clients import aiokafka_security, faust_credentials, security_settings

    for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SSL_CAFILE"):
        monkeypatch.delenv(name, raising=False)
    assert security_settings() == {} and faust_credentials() is None  # plaintext by default

    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "nextclick")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    assert security_settings() == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "nextclick",
        "sasl_plain_password": "s3cret",
    }
    assert aiokafka_security()["ssl_context"] is not None  # *_SSL gets a context (system CAs)
    credentials = faust_credentials()
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password) == ("nextclick", "s3cret")
    assert credentials.ssl_context is not None
