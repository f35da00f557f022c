"""Write each role's variable table into its README from meta/argument_specs.yml, the one source.

python scripts/role_docs.py          rewrite the tables
python scripts/role_docs.py --check  exit 1 if a README differs from its argument_specs
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROLES = Path(__file__).resolve().parents[1] / "roles"
BEGIN = "<!-- variables: generated from meta/argument_specs.yml by scripts/role_docs.py; edit those -->"
END = "<!-- end of variables -->"
TABLE = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)


def cell(value) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value in ("", [], {}):
        return f"`{value!r}`" if value != "" else '`""`'
    return f"`{value}`"


def table(role: Path) -> str:
    options = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    rows = [BEGIN, "", "| variable | default | meaning |", "|---|---|---|"]
    for name, spec in options.items():
        if spec.get("required"):
            default = "required"
        elif "default" in spec:
            default = cell(spec["default"])
        else:
            default = "derived, see `defaults/main.yml`"
        rows.append(f"| `{name}` | {default} | {' '.join(str(spec['description']).split())} |")
    return "\n".join([*rows, "", END])


def render(readme: str, generated: str) -> str:
    if TABLE.search(readme):
        return TABLE.sub(lambda _: generated, readme)
    table_start = re.search(r"^\| variable \| default \| meaning \|$", readme, re.MULTILINE)
    if not table_start:
        raise SystemExit("no variable table to replace")
    end = readme.find("\n\n", table_start.start())
    return readme[: table_start.start()] + generated + readme[end if end != -1 else len(readme) :]


def main(argv: list[str]) -> int:
    stale = []
    for role in sorted(path for path in ROLES.iterdir() if (path / "meta" / "argument_specs.yml").is_file()):
        readme = role / "README.md"
        current = readme.read_text()
        wanted = render(current, table(role))
        if wanted != current:
            stale.append(role.name)
            if "--check" not in argv:
                readme.write_text(wanted)
    if stale and "--check" in argv:
        print(f"role READMEs out of date with argument_specs: {', '.join(stale)} (run scripts/role_docs.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
