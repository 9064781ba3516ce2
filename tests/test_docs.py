"""
The documentation checks itself: README.md and docs/*.md.

- every relative link and image resolves to an existing file (and a #heading anchor to a
  heading of that file);
- every command in a ```bash block that runs a project script (`python X.py`, `python -m
  noisy_mnist.figures`, `bash scripts/X.sh`, also after `mpiexec -n 8`) names a file that
  exists, and every --flag on its line (with its `\\`-continued lines, and in shell variables
  such as $MODEL_FLAGS set earlier in the same block) is one the script accepts, as its
  --help lists them;
- README.md stays short.

The --help texts come from one Python process that runs every script in turn (torch is
imported once), so the whole file takes a few seconds.
"""

import functools
import glob
import json
import os
import re
import shlex
import subprocess
import sys

from tests.conftest import ROOT

README = os.path.join(ROOT, "README.md")
MAX_README_LINES = 220
DOCS = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))

PYTHONS = {"python", "python3", ".venv/bin/python", "$PY", "${PY}"}
PREFIXES = {"time", "nohup", "exec"}  # words before a command; `mpiexec -n N` and `timeout S` are handled below
SHELL_OPERATORS = {";", "&&", "||", "|", "&", "(", ")"}
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
VARIABLE = re.compile(r"^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$")


def rel(path):
    return os.path.relpath(path, ROOT)


# ---------------------------------------------------------------------------------------
# Markdown


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def fenced_blocks(lines):
    """[(language, [(line number, text)])] of the ``` blocks; line numbers from 1."""
    blocks, current, lang = [], None, ""
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if current is None:
                current, lang = [], stripped[3:].strip().lower()
            else:
                blocks.append((lang, current))
                current = None
        elif current is not None:
            current.append((number, line))
    return blocks


def prose_lines(lines):
    """(line number, text) outside fenced blocks, with `code spans` blanked out."""
    inside = False
    for number, line in enumerate(lines, 1):
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            yield number, re.sub(r"`[^`]*`", "``", line)


def github_anchor(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors_of(path):
    anchors, seen, inside = set(), {}, False
    for line in read_lines(path):
        if line.strip().startswith("```"):
            inside = not inside
            continue
        m = None if inside else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = github_anchor(m.group(1))
            count = seen.get(base, 0)
            anchors.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
    return anchors


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*?(?:src|href)=\"([^\"]+)\"", re.I)


def test_links_and_images_resolve():
    problems = []
    for doc in DOCS:
        for number, line in prose_lines(read_lines(doc)):
            for target in LINK.findall(line) + HTML_SRC.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                    continue
                path_part, _, anchor = target.partition("#")
                path = os.path.normpath(os.path.join(os.path.dirname(doc), path_part)) if path_part else doc
                if not os.path.exists(path):
                    problems.append(f"{rel(doc)}:{number}: link to {target!r}: {rel(path)} does not exist")
                elif anchor and path.endswith(".md") and anchor not in anchors_of(path):
                    problems.append(f"{rel(doc)}:{number}: link to {target!r}: {rel(path)} has no heading "
                                    f"with the anchor #{anchor}")
    assert not problems, "\n".join(problems)


def test_readme_is_short():
    n = len(read_lines(README))
    assert n <= MAX_README_LINES, f"README.md:{n}: {n} lines, more than {MAX_README_LINES}; move detail to docs/"


# ---------------------------------------------------------------------------------------
# Commands in ```bash blocks


def logical_lines(block):
    """[(first line number, text)]: `\\`-continued lines joined (as the shell joins them)."""
    result, start, parts = [], None, []
    for number, line in block:
        if start is None:
            start = number
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        parts.append(line)
        result.append((start, " ".join(parts)))
        start, parts = None, []
    if parts:
        result.append((start, " ".join(parts)))
    return result


def shell_words(text):
    """The words of a command line, shell operators as words of their own, comments dropped."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def simple_commands(words):
    command = []
    for word in words:
        if word in SHELL_OPERATORS or set(word) <= set(";&|()<>"):
            if command:
                yield command
            command = []
        else:
            command.append(word)
    if command:
        yield command


def strip_prefixes(words):
    """
    The command after assignments (A=B cmd), `mpiexec -n N [-hosts H]`, `srun [options]`,
    `timeout S`, `time`; `torchrun [options] X.py` becomes `python X.py`.
    """
    i = 0
    while i < len(words):
        word = words[i]
        if ASSIGNMENT.match(word) or word in PREFIXES:
            i += 1
        elif word in ("mpiexec", "mpirun"):
            i += 1
            while i < len(words) and words[i].startswith("-"):
                i += 2 if words[i] in ("-n", "-np", "-hosts", "-host", "-f") else 1
        elif word in ("srun", "torchrun"):
            i += 1
            while i < len(words) and words[i].startswith("-"):  # --flag=value, --standalone, or --flag value
                i += 1 if "=" in words[i] or words[i] == "--standalone" else 2
            if word == "torchrun" and i < len(words) and words[i].endswith(".py"):
                return ["python", *words[i:]]
        elif word == "timeout":
            i += 2
        else:
            break
    return words[i:]


def expand(words, variables):
    """$NAME and ${NAME} replaced by the words of NAME's value, when the block set it."""
    out = []
    for word in words:
        m = VARIABLE.match(word)
        if m and m.group(1) in variables:
            out.extend(variables[m.group(1)])
        else:
            out.append(word)
    return out


def project_target(words):
    """
    (kind, path, arguments) when the command runs a project script: kind "python" for a
    Python script or module of this repository, "bash" for a shell script; else None.
    """
    if not words:
        return None
    if words[0] in PYTHONS or words[0].endswith("/python"):
        args = words[1:]
        while args and args[0] in ("-u", "-O", "-B"):
            args = args[1:]
        if not args:
            return None
        if args[0] == "-m":
            if len(args) < 2:
                return None
            module = args[1]
            if not os.path.isdir(os.path.join(ROOT, module.split(".")[0])):
                return None  # python -m pytest and the like: not a project script
            path = module.replace(".", "/") + ".py"
            return ("python", path, args[2:], f"-m {module}")
        if args[0].startswith("-"):
            return None  # python -c ...
        if args[0].endswith(".py"):
            return ("python", args[0], args[1:], args[0])
        return None
    if words[0] in ("bash", "sh") and len(words) > 1 and words[1].endswith(".sh"):
        return ("bash", words[1], words[2:], words[1])
    if words[0].endswith((".py", ".sh")) and "/" in words[0]:
        return ("python" if words[0].endswith(".py") else "bash", words[0], words[1:], words[0])
    return None


def documented_commands():
    """[(doc, line number, kind, script path, arguments, runnable target)] over every bash block."""
    found = []
    for doc in DOCS:
        for lang, block in fenced_blocks(read_lines(doc)):
            if lang not in ("bash", "sh", "shell", "console"):
                continue
            found += [(doc, number) + target for number, target in block_commands(block, rel(doc))]
    return found


def block_commands(block, where):
    """(line number, project target) for each command of one shell block, with its variables expanded."""
    variables = {}
    for number, text in logical_lines(block):
        try:
            words = shell_words(text)
        except ValueError as e:
            raise AssertionError(f"{where}:{number}: cannot read the command line ({e}): {text}")
        for command in simple_commands(words):
            if len(command) == 1 and ASSIGNMENT.match(command[0]):
                name, value = ASSIGNMENT.match(command[0]).groups()
                variables[name] = shlex.split(value)
                continue
            target = project_target(expand(strip_prefixes(command), variables))
            if target:
                yield number, target


HELP_RUNNER = r"""
import contextlib, io, json, os, runpy, sys
sys.path.insert(0, os.getcwd())
out = {}
for target in sys.argv[1:]:
    buf = io.StringIO()
    argv, path = sys.argv, list(sys.path)
    sys.argv = [target.split()[-1], "--help"]
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            if target.startswith("-m "):
                runpy.run_module(target[3:], run_name="__main__", alter_sys=True)
            else:
                sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
                runpy.run_path(target, run_name="__main__")
        status = "no exit"
    except SystemExit as e:
        status = e.code
    except BaseException as e:
        status = repr(e)
    finally:
        sys.argv, sys.path[:] = argv, path
    out[target] = {"status": status, "help": buf.getvalue()}
sys.stdout.write(json.dumps(out))
"""


def accepted_flags(targets):
    """{target: (status, set of --flags)} from each script's --help, in one process."""
    proc = subprocess.run([sys.executable, "-c", HELP_RUNNER, *targets], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    helps = json.loads(proc.stdout)
    result = {}
    for target, info in helps.items():
        text = info["help"]
        flags = set(re.findall(r"^\s{2,}(?:-\w, )?(--[A-Za-z0-9][\w-]*)", text, re.M))
        flags |= set(re.findall(r"\[(--[A-Za-z0-9][\w-]*)", text))
        result[target] = (info["status"], flags, text)
    return result


def test_documented_commands_name_real_scripts_and_flags():
    commands = documented_commands()
    assert commands, "no project commands found in the bash blocks"
    problems = []
    python_targets = []
    for doc, number, kind, path, args, target in commands:
        if not os.path.isfile(os.path.join(ROOT, path)):
            problems.append(f"{rel(doc)}:{number}: {path} does not exist")
        elif kind == "python" and target not in python_targets:
            python_targets.append(target)
    helps = accepted_flags(python_targets) if python_targets else {}
    for doc, number, kind, path, args, target in commands:
        if kind != "python" or target not in helps:
            continue
        status, flags, text = helps[target]
        if status != 0 or not flags:
            problems.append(f"{rel(doc)}:{number}: `python {target} --help` did not list its flags "
                            f"(exit {status}): {text[-300:]}")
            continue
        for word in args:
            if word.startswith("--") and len(word) > 2:
                flag = word.split("=", 1)[0]
                if flag not in flags:
                    problems.append(f"{rel(doc)}:{number}: {target} does not accept {flag}")
    assert not problems, "\n".join(problems)


def test_the_checker_reads_shell_lines_as_the_shell_does():
    block = list(enumerate([
        'FLAGS="--large_size 32 \\',
        '--small_size 8"',
        "mpiexec -n 8 python ddpm_sr_sample.py $FLAGS --seed 1   # a comment --not_a_flag",
        "cd x && python -m noisy_mnist.figures r.json out; bash scripts/test.sh -k testbed",
        "python -m pytest -q tests/test_docs.py",
        "torchrun --nnodes 2 --standalone --rdzv_endpoint=h:1 sr_mean_train.py --lr 1",
        "srun --ntasks-per-node=8 -n 2 python sr_var_test.py --batch_size 2",
    ], 1))
    seen = [(number,) + target for number, target in block_commands(block, "test")]
    assert seen == [
        (3, "python", "ddpm_sr_sample.py", ["--large_size", "32", "--small_size", "8", "--seed", "1"],
         "ddpm_sr_sample.py"),
        (4, "python", "noisy_mnist/figures.py", ["r.json", "out"], "-m noisy_mnist.figures"),
        (4, "bash", "scripts/test.sh", ["-k", "testbed"], "scripts/test.sh"),
        (6, "python", "sr_mean_train.py", ["--lr", "1"], "sr_mean_train.py"),
        (7, "python", "sr_var_test.py", ["--batch_size", "2"], "sr_var_test.py"),
    ]
