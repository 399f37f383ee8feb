"""What a makefile would run: `make -n` output as {run: options}, so that tests compare experiments, not recipe text.

A run is a Python script's invocation, named by what it writes (main.py's --workdir without _tmp, else --out) or by
its script and subcommand. Its options are argparse's view: the last occurrence of a flag wins. Spellings that mean
the same option are made equal here, each named below.
"""
import gzip
import json
import re
import shlex
from pathlib import Path

# a chosen parameter read from a choice csv when the run starts: before, the shell's $(awk ...) of the file; now,
# main.py --chosen FILE[:COLUMN=VALUE]. Both read as "chosen:<file>" for every option the file sets; with
# selectors=True as "chosen:<file>:<column>=<value>" when the run reads one row ($1 == V in awk: the first column).
AWK = re.compile(r"\$\(awk -F, '([^']*)' (\S+?)\)")
AWK_ROW = re.compile(r'\$1 == "?([^" ]+)"?')
CHOSEN_OPTIONS = {"spottune_tau.csv": ["--tau"], "spottune_params.csv": ["--tau", "--k_reg"],
                  "sfda_params.csv": ["--l_rate"], "reuse_params.csv": ["--reuse"]}
FIRST_COLUMN = {"spottune_params.csv": "budget", "reuse_params.csv": "method"}
# flags that change nothing: --dice_3d (3D Dice is always computed); --do_hd N (any value turned HD95 on) is --hd95
SAME = {"--do_hd": "--hd95"}
NO_OP = {"--dice_3d"}
VALUED_FLAGS_WITHOUT_VALUE = {"--hd95"}


def commands(text: str) -> list[str]:
    """The recipe lines of `make -n` output, continuation lines joined."""
    return [line for line in text.replace("\\\n", " ").splitlines() if re.search(r"\S+\.py\b", line)]


def options(tokens: list[str]) -> dict[str, str]:
    """--flag value... pairs (--flag=value too), the last occurrence winning; a flag alone has the value ''."""
    found, flag = {}, None
    for token in tokens:
        if token.startswith("--"):
            flag, _, value = token.partition("=")
            flag = SAME.get(flag, flag)
            found[flag] = value
            if flag in VALUED_FLAGS_WITHOUT_VALUE:
                flag = None                     # --do_hd 90: the 90 meant nothing
        elif flag is not None:
            found[flag] = f"{found[flag]} {token}".strip()
    for flag in NO_OP:
        found.pop(flag, None)
    return found


def resolve_chosen(found: dict[str, str], selectors: bool = False) -> dict[str, str]:
    """--chosen FILE[:COLUMN=VALUE] as the options that file sets (the form the awk calls had)."""
    if "--chosen" not in found:
        return found
    path, _, row = found.pop("--chosen").partition(":")
    chosen = f"chosen:{path}" + (f":{row}" if selectors and row else "")
    for flag in CHOSEN_OPTIONS[Path(path).name]:
        found[flag] = (found[flag].split(":")[0] + ":" if flag == "--reuse" else "") + chosen
    return found


def awk_as_chosen(match: re.Match, selectors: bool) -> str:
    program, path = match.groups()
    row = AWK_ROW.search(program)
    if not (selectors and row):
        return f"chosen:{path}"
    return f"chosen:{path}:{FIRST_COLUMN.get(Path(path).name, '$1')}={row.group(1)}"


def parse(line: str, root: str = "", selectors: bool = False) -> tuple[str, list[str], dict[str, str]]:
    """One command line as (run, the tokens before the script: interpreter, its flags, a launcher, options)."""
    line = AWK.sub(lambda m: awk_as_chosen(m, selectors), line)
    if root:
        line = line.replace(f"{root}/", "")
    tokens = shlex.split(line)
    start = next(i for i, t in enumerate(tokens) if t.endswith(".py"))
    script, rest = Path(tokens[start]).name, tokens[start + 1:]
    sub = rest[0] if rest and not rest[0].startswith("-") else ""
    found = resolve_chosen(options(rest[1:] if sub else rest), selectors)
    name = found.get("--workdir", "").removesuffix("_tmp") or found.get("--out") or ""
    return " ".join(filter(None, [script, sub, name])), tokens[:start], found


def runs(text: str, root: str = "", selectors: bool = False) -> dict[str, list[dict[str, str]]]:
    """{run: [options, ...]} of `make -n` output; ``root`` is cut from every path (a test's tmp dir); ``selectors``:
    a chosen option also names the row of the choice csv it reads (chosen:<file>:budget=45)."""
    table: dict[str, list[dict[str, str]]] = {}
    for line in commands(text):
        key, _, found = parse(line, root, selectors)
        if found not in table.setdefault(key, []):
            table[key].append(found)
    return table


def prefixes(text: str, root: str = "") -> dict[str, set[tuple[str, ...]]]:
    """{run: {what comes before the script}}: the interpreter with its flags (python -O), a launcher (srun ...)."""
    table: dict[str, set[tuple[str, ...]]] = {}
    for line in commands(text):
        key, prefix, _ = parse(line, root)
        table.setdefault(key, set()).add(tuple(prefix))
    return table


def save(table: dict, path: Path) -> None:
    with gzip.open(path, "wt") as f:
        json.dump(table, f, indent=0, sort_keys=True)


def load(path: Path) -> dict:
    with gzip.open(path, "rt") as f:
        return json.load(f)


def differences(expected: dict, actual: dict, limit: int = 10) -> list[str]:
    """Readable differences of two run tables: runs missing or new, and options that differ."""
    out = [f"missing: {k}" for k in sorted(set(expected) - set(actual))]
    out += [f"new: {k}" for k in sorted(set(actual) - set(expected))]
    for key in sorted(set(expected) & set(actual)):
        if canonical(expected[key]) != canonical(actual[key]):
            a, b = expected[key][0], actual[key][0]
            diff = {f: (a.get(f), b.get(f)) for f in set(a) | set(b) if a.get(f) != b.get(f)}
            out.append(f"options of {key}: {diff}")
    return out[:limit]


def canonical(option_sets: list[dict]) -> list[str]:
    return sorted(json.dumps(o, sort_keys=True) for o in option_sets)
