"""The documentation cannot lie: its commands parse and its links resolve.

Every fenced code block (```` ```bash ````, ```` ```sh ````, ```` ```console ````, ```` ``` ````)
of ``README.md`` and ``docs/*.md`` is read as shell. Each command that runs one of the project's
scripts (``python train.py``, ``python eval_linear.py``, ``python finetune.py``,
``python -m visualization.main_temporal``, ``python scripts/<name>.py``, ``torchrun … train.py``,
``bash scripts/<name>.sh``) must name a script that exists, and its flags must be accepted by that
script's own argparse parser: every flag token must be one of the parser's option strings exactly
(argparse would accept an unambiguous abbreviation, which would hide a typo), and
``parser.parse_args`` must not exit. Nothing is run: parsers only parse (files named in a command
are checked by the scripts themselves, later). Every relative link ``[text](path)`` must point
to a file that exists, and a ``#fragment`` into a Markdown page to one of its headings.

Commands are written with concrete example paths, so they parse as they stand; ``$VAR`` takes
the value assigned earlier in the same block (``CKPT=runs/k400/checkpoint_last.pth``), else a
stand-in; ``<placeholder>`` becomes a stand-in value. An elided argument list (``...``) or an
optional ``[--flag]`` is an error: write the command out.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}

ENTRY_SCRIPTS = {"train.py", "eval_linear.py", "finetune.py"}
OUR_DIRS = ("scripts/", "visualization/")
PYTHON = re.compile(r"^(?:.*/)?python(?:\d+(?:\.\d+)?)?$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
PLACEHOLDER = re.compile(r"<[A-Za-z][^<>\s]*>")
NEGATIVE_NUMBER = re.compile(r"^-\d+(?:\.\d*)?(?:e-?\d+)?$")
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
REDIRECTIONS = {">", ">>", "<", "<<", ">&", "&>", "<&"}


@dataclass
class Command:
    """One shell command of a fenced block: where it is, and its words."""

    page: str
    line: int
    words: list[str]
    text: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass
class Invocation:
    """A command that runs one of our scripts: the script's path (relative to the repository)
    and the arguments it gets."""

    command: Command
    script: str
    args: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Markdown


def fenced_blocks(text: str) -> Iterator[tuple[int, str, list[str]]]:
    """``(line of the first body line, language, body lines)`` of every fenced block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^\s*(`{3,}|~{3,})\s*([^\s`]*)", lines[i])
        if not opening:
            i += 1
            continue
        fence, language = opening.group(1), opening.group(2).lower()
        body, start = [], i + 2
        i += 1
        while i < len(lines) and not re.match(rf"^\s*{fence[0]}{{{len(fence)},}}\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        yield start, language, body
        i += 1


def logical_lines(body: list[str], console: bool) -> Iterator[tuple[int, str]]:
    """Join ``\\``-continued lines; in a ``console`` block only ``$ `` lines are commands (the rest
    is output); heredoc bodies are skipped. Yields ``(offset of the first line, text)``."""
    i = 0
    while i < len(body):
        raw = body[i].strip()
        first = i
        i += 1
        if console:
            if not raw.startswith("$ "):
                continue
            raw = raw[2:]
        while raw.endswith("\\") and i < len(body):
            raw = raw[:-1] + " " + body[i].strip()
            i += 1
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", raw)
        if heredoc:
            while i < len(body) and body[i].strip() != heredoc.group(1):
                i += 1
            i += 1
        if raw and not raw.startswith("#"):
            yield first, raw


def split_commands(text: str) -> list[list[str]]:
    """Shell words of each simple command in ``text`` (split at ``&& || ; | &``), without
    comments and redirections."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    commands, current, skip_next = [], [], False
    for word in words:
        if skip_next:
            skip_next = False
        elif word in SEPARATORS:
            commands.append(current)
            current = []
        elif word in REDIRECTIONS or re.fullmatch(r"\d?[<>]+&?", word):
            skip_next = True
        else:
            current.append(word)
    commands.append(current)
    return [c for c in commands if c]


def page_commands(path: Path, root: Path = REPO) -> Iterator[Command]:
    """Every command of every shell block of a page, variables expanded."""
    page = str(path.relative_to(root))
    for start, language, body in fenced_blocks(path.read_text(encoding="utf-8")):
        if language not in SHELL_LANGUAGES:
            continue
        variables: dict[str, str] = {}
        for offset, text in logical_lines(body, console=language == "console"):
            text = VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), "STANDIN"), text)
            text = PLACEHOLDER.sub("STANDIN", text)
            try:
                commands = split_commands(text)
            except ValueError:  # unbalanced quotes: no words; test_every_command_is_shell fails
                yield Command(page, start + offset, [], text)
                continue
            for words in commands:
                if all(ASSIGNMENT.match(w) for w in words):  # VAR=value lines set variables
                    for w in words:
                        name, value = w.split("=", 1)
                        variables[name] = value
                    continue
                yield Command(page, start + offset, words, text)


# --------------------------------------------------------------------------------------------
# Which commands run our scripts


def _is_ours(script: str) -> bool:
    return script in ENTRY_SCRIPTS or script.startswith(OUR_DIRS)


def invocation(command: Command) -> Invocation | None:
    """The script of ours that ``command`` runs and its arguments, or ``None``."""
    words = list(command.words)
    while words and (ASSIGNMENT.match(words[0]) or words[0] in {"env", "time", "exec", "nohup"}):
        words.pop(0)
    if words and words[0] == "taskset":  # taskset -c CPUS cmd ...
        words = words[3:] if len(words) > 2 and words[1].startswith("-") else words[2:]
    if not words:
        return None
    head, rest = words[0], words[1:]
    if head in {"bash", "sh", "sbatch", "srun"}:
        scripts = [w for w in rest if w.endswith(".sh") and not w.startswith("-")]
        if scripts and _is_ours(scripts[0]):
            return Invocation(command, scripts[0], rest[rest.index(scripts[0]) + 1:])
        return None
    if head == "torchrun" or head.endswith("/torchrun"):
        return _launched(command, rest)
    if not PYTHON.match(head):
        return None
    while rest and rest[0].startswith("-") and rest[0] not in {"-m", "-c", "-"}:
        rest = rest[1:]  # interpreter options: -u, -O, -X ..., -W ...
    if not rest or rest[0] in {"-c", "-"}:
        return None
    if rest[0] == "-m":
        if len(rest) < 2:
            return None
        module = rest[1]
        if module in {"torch.distributed.run", "torch.distributed.launch"}:
            return _launched(command, rest[2:])
        script = module.replace(".", "/") + ".py"
        return Invocation(command, script, rest[2:]) if _is_ours(script) else None
    script = rest[0].removeprefix("./")
    return Invocation(command, script, rest[1:]) if _is_ours(script) else None


def _launched(command: Command, rest: list[str]) -> Invocation | None:
    """``torchrun [its options] script.py [args]``: the first ``.py`` word is the script."""
    for i, word in enumerate(rest):
        if word.endswith(".py") and not word.startswith("-"):
            script = word.removeprefix("./")
            return Invocation(command, script, rest[i + 1:]) if _is_ours(script) else None
    return None


UNPARSABLE: list[Command] = []


def all_invocations() -> list[Invocation]:
    found = []
    for path in PAGES:
        for command in page_commands(path):
            if not command.words:
                UNPARSABLE.append(command)
                continue
            inv = invocation(command)
            if inv is not None:
                found.append(inv)
    return found


INVOCATIONS = all_invocations()


# --------------------------------------------------------------------------------------------
# Parsers


def script_parser(script: str) -> tuple[argparse.ArgumentParser, bool]:
    """The argparse parser of a Python script of ours, and whether it came from the module's
    ``build_parser()``. A script without one builds its parser inside ``parse_args(argv)``; that
    function is called on ``--help``-free empty input with ``ArgumentParser.parse_args``
    intercepted, which hands back the parser before anything is parsed."""
    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    if hasattr(module, "build_parser"):
        return module.build_parser(), True
    if not hasattr(module, "parse_args"):
        raise AssertionError(f"{script} has neither build_parser() nor parse_args(argv)")

    class Captured(Exception):
        pass

    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        seen.append(self)
        raise Captured

    argparse.ArgumentParser.parse_args = capture
    try:
        module.parse_args([])
    except Captured:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original
    if not seen:
        raise AssertionError(f"{script}: parse_args(argv) did not build an ArgumentParser")
    return seen[0], False


def option_strings(parser: argparse.ArgumentParser, args: list[str]) -> set[str]:
    """The parser's option strings plus those of the sub-command ``args`` selects, if any."""
    options = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = next((a for a in args if a in action.choices), None)
            if chosen is not None:
                options |= option_strings(action.choices[chosen], args[args.index(chosen) + 1:])
    return options


def unknown_flags(parser: argparse.ArgumentParser, args: list[str]) -> list[str]:
    """Flag words of ``args`` that are not exactly an option string of ``parser`` (so an
    abbreviation that argparse would expand counts as unknown)."""
    options = option_strings(parser, args)
    bad = []
    for word in args:
        if word == "--":
            break
        if word == "-" or not word.startswith("-") or NEGATIVE_NUMBER.match(word):
            continue
        flag = word.split("=", 1)[0]
        if flag not in options:
            bad.append(word)
    return bad


def expand_argument_files(parser: argparse.ArgumentParser, args: list[str]) -> tuple[list[str], list[str]]:
    """``@file`` words, for a parser with ``fromfile_prefix_chars``: a file in the repository is
    read in (so its flags are checked too); one that is not (a run's output) is returned
    separately. Returns ``(args, missing files)``."""
    prefixes = parser.fromfile_prefix_chars or ""
    out, missing = [], []
    for word in args:
        if word[:1] and word[0] in prefixes:
            path = REPO / word[1:]
            if path.is_file():
                for line in path.read_text().splitlines():
                    out.extend(parser.convert_arg_line_to_args(line))
            else:
                missing.append(word[1:])
            continue
        out.append(word)
    return out, missing


def check_invocation(inv: Invocation) -> None:
    """Fail with a message naming the page and line unless the command would parse."""
    where, text = inv.command.where, inv.command.text
    assert (REPO / inv.script).is_file(), f"{where}: {inv.script} does not exist\n  {text}"
    if not inv.script.endswith(".py"):
        return
    elided = [w for w in inv.args if w in {"...", "…"} or w.startswith("[") or w.endswith("]")]
    assert not elided, (f"{where}: {inv.script} command with elided/optional arguments {elided}; "
                        f"write it out with concrete example values\n  {text}")
    parser, _ = script_parser(inv.script)
    args, missing_files = expand_argument_files(parser, inv.args)
    bad = unknown_flags(parser, args)
    assert not bad, f"{where}: {inv.script} has no flag(s) {bad}\n  {text}"
    if missing_files or {"-h", "--help"} & set(args):
        return  # flags checked; parsing would need the argument file, or would print the help
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exit_:
        message = (stderr.getvalue().strip().splitlines() or ["(no message)"])[-1]
        pytest.fail(f"{where}: {inv.script} rejects its arguments (exit {exit_.code}): "
                    f"{message}\n  {text}")


@pytest.mark.parametrize("inv", INVOCATIONS, ids=[f"{i.command.where}:{i.script}" for i in INVOCATIONS])
def test_documented_command_parses(inv: Invocation, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    check_invocation(inv)


def test_every_command_is_shell() -> None:
    """A line of a shell block that a shell could not split (unbalanced quotes) is reported, not
    skipped: it may hide a command of ours."""
    assert not UNPARSABLE, "unparsable shell lines:\n  " + "\n  ".join(
        f"{c.where}: {c.text}" for c in UNPARSABLE)


def test_every_entry_script_is_documented() -> None:
    """The extractor finds the commands (a silent regex failure would pass every test above)."""
    documented = {inv.script for inv in INVOCATIONS}
    expected = {"train.py", "eval_linear.py", "finetune.py", "visualization/main_temporal.py",
                "scripts/demo.py", "scripts/make_synthetic.py", "scripts/extract_frames.py",
                "scripts/build_csv.py"}
    assert expected <= documented, f"no documented command for {sorted(expected - documented)}"
    assert any(inv.command.words[0] == "torchrun" for inv in INVOCATIONS)


# --------------------------------------------------------------------------------------------
# Links


def _strip_code(text: str, inline: bool = True) -> str:
    """The page without fenced blocks and (with ``inline``) inline code spans, whose brackets
    are not links."""
    lines, inside, fence = [], False, ""
    for line in text.splitlines():
        opening = re.match(r"^\s*(`{3,}|~{3,})", line)
        if opening and (not inside or opening.group(1)[0] == fence[0]):
            inside, fence = not inside, opening.group(1)
            lines.append("")
            continue
        lines.append("" if inside else re.sub(r"`+[^`]*`+", "", line) if inline else line)
    return "\n".join(lines)


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown page's headings (lower case, punctuation dropped, spaces to
    hyphens, ``-1``, ``-2`` … for repeats)."""
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    for line in _strip_code(path.read_text(encoding="utf-8"), inline=False).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1)).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def page_links(path: Path) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(_strip_code(path.read_text(encoding="utf-8")).splitlines(), 1):
        for match in LINK.finditer(line):
            yield number, match.group(1)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for number, target in page_links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        file_part, _, fragment = target.partition("#")
        path = (page.parent / file_part).resolve() if file_part else page
        if not path.exists():
            broken.append(f"{page.name}:{number}: {target} (no such file)")
        elif fragment and path.suffix == ".md" and fragment not in heading_anchors(path):
            broken.append(f"{page.name}:{number}: {target} (no heading #{fragment})")
    assert not broken, "broken links:\n  " + "\n  ".join(broken)


# --------------------------------------------------------------------------------------------
# The checker itself


def _commands_of(markdown: str, tmp_path: Path) -> list[Command]:
    page = tmp_path / "page.md"
    page.write_text(markdown)
    return list(page_commands(page, root=tmp_path))


def test_extractor_reads_shell_the_way_a_shell_does(tmp_path: Path) -> None:
    md = (
        "text\n```bash\n# a comment\nCKPT=runs/k400/checkpoint_last.pth\n"
        "python eval_linear.py --pretrained $CKPT \\\n    --train_csv a.csv  # trailing comment\n"
        "OMP_NUM_THREADS=1 .venv/bin/python -m visualization.main_temporal --val_csv <csv> && make test\n"
        "torchrun --standalone --nproc_per_node 4 train.py --csv_file x.csv\n"
        "python - <<'EOF'\nimport os\nEOF\n```\n"
        "```console\n$ python scripts/demo.py --fresh\noutput line --not-a-flag\n```\n"
        "```python\npython train.py --not-shell\n```\n"
    )
    invs = [i for i in map(invocation, _commands_of(md, tmp_path)) if i is not None]
    assert [(i.script, i.args) for i in invs] == [
        ("eval_linear.py", ["--pretrained", "runs/k400/checkpoint_last.pth", "--train_csv", "a.csv"]),
        ("visualization/main_temporal.py", ["--val_csv", "STANDIN"]),
        ("train.py", ["--csv_file", "x.csv"]),
        ("scripts/demo.py", ["--fresh"]),
    ]
    assert [i.command.line for i in invs] == [5, 7, 8, 14]


def test_flag_check_rejects_abbreviations_and_unknown_flags() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--csv_file")
    parser.add_argument("--epoch", type=int)
    parser.add_argument("--thres", "-thres", type=float)
    sub = parser.add_subparsers(dest="dataset")
    sub.add_parser("ucf101").add_argument("--split", type=int)
    assert unknown_flags(parser, ["--csv_file=a", "-thres", "0.1", "--epoch", "-3"]) == []
    assert parser.parse_args(["--csv", "a"]).csv_file == "a"  # argparse would take it...
    assert unknown_flags(parser, ["--csv", "a", "--epochs", "2"]) == ["--csv", "--epochs"]  # ...we do not
    assert unknown_flags(parser, ["ucf101", "--split", "1"]) == []
    assert unknown_flags(parser, ["--split", "1"]) == ["--split"]


def test_heading_anchors_follow_github(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# The method\n## §3.2 Motion contrast\n### §3 Total\n"
                    "## What the `local-global` alignment learned\n## Notes\n## Notes\n"
                    "```bash\n# not a heading\n```\n")
    assert heading_anchors(page) == {"the-method", "32-motion-contrast", "3-total",
                                     "what-the-local-global-alignment-learned", "notes", "notes-1"}
    assert list(page_links(page)) == []
