"""CI tests what README says: README's test command runs verbatim in .ci/run, with nothing installed before it."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_readme_test_command_as_written():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^Run the tests \(CI runs exactly this.*\n\n {4}(\S.*)$", readme, re.MULTILINE)
    assert match, "README's 'Run the tests' block (an indented command after that line) is missing"
    command = match.group(1).strip()
    assert "pytest" in command and 'pip install -e ".[dev]"' in command
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert command in ci, f".ci/run does not run README's test command {command!r}"
    # Installing anything first (a pinned torch, say) would test other versions than README's command gets.
    before = [line for line in ci[: ci.index(command)] if line and not line.startswith("#")]
    installs = [line for line in before if re.search(r"pip\b.*\binstall\b", line) and "--upgrade pip" not in line]
    assert not installs, f".ci/run installs packages before README's command: {installs}"


def test_code_tests_and_docs_cite_public_sources_only():
    """Facts are cited from public sources or sr4's own docs/ pages (docs/method.md), never from an internal
    document users do not have."""
    texts = [*ROOT.glob("src/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("tools/*.py"),
             *ROOT.glob("benchmarks/*.py"), *ROOT.glob("docs/*.md"), *ROOT.glob("*.md"), *ROOT.glob("configs/*")]
    marker = "SP" + "EC"  # spelled apart so this file does not match itself
    pattern = re.compile(rf"\b{marker}\b(\.md| §| section|\s*\d)")
    cited = [str(p.relative_to(ROOT)) for p in texts if p.is_file() and pattern.search(p.read_text(encoding="utf-8"))]
    assert cited == []
    assert (ROOT / "docs" / "method.md").is_file()
