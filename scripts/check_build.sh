#!/usr/bin/env bash
# Build the wheel and the sdist with `python -m build`, install each into a fresh virtual
# environment, and smoke-run it there: the console script, the plugin on the minimal
# example (offline queue), `pytest-simscope check` on what it queued, and py.typed.
#
# The build runs on a copy of the checkout's files (tracked and new, not ignored), so the
# work tree gets no build/ or dist/. Needs `build` (installed into a throwaway venv when the
# Python running this has none) and PyPI for the build backend and the dependencies.
# Prints the artefacts' names and sizes; exit status 0 when both passed.
#
#   bash scripts/check_build.sh            # DIST_DIR=dir keeps the artefacts there
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=${PYTHON:-python3}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dist=${DIST_DIR:-$work/dist}
mkdir -p "$dist"

echo "== copying the checkout"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' name; do
    if [ -f "$name" ]; then
        mkdir -p "$work/src/$(dirname "$name")"
        cp -p "$name" "$work/src/$name"
    fi
done

echo "== python -m build"
builder=$python
if ! "$python" -c "import build" 2>/dev/null; then
    "$python" -m venv "$work/build-venv"
    "$work/build-venv/bin/python" -m pip install --quiet build
    builder=$work/build-venv/bin/python
fi
"$builder" -m build --outdir "$dist" "$work/src" >"$work/build.log" 2>&1 || {
    cat "$work/build.log"
    exit 1
}
wheel=$(ls "$dist"/pytest_simscope-*.whl)
sdist=$(ls "$dist"/pytest_simscope-*.tar.gz)
ls -l "$wheel" "$sdist"

smoke() {
    local what=$1 artefact=$2
    local venv="$work/venv-$what" suite="$work/suite-$what"
    echo "== $what: install into a fresh virtual environment"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet "$artefact"
    "$venv/bin/pytest-simscope" --version
    # From a neutral folder: in the checkout, `import pytest_simscope` would find its copy.
    (cd "$work" && "$venv/bin/python" -) <<'EOF'
import importlib.metadata as md
import pathlib

import pytest_simscope

where = pathlib.Path(pytest_simscope.__file__).parent
assert (where / "py.typed").is_file(), "py.typed is missing"
assert "site-packages" in str(where), f"not the installed copy: {where}"
entry = [e for e in md.entry_points(group="pytest11") if e.name == "simscope"]
assert entry and entry[0].value == "pytest_simscope.plugin", entry
print(f"pytest_simscope {md.version('pytest-simscope')} from {where}")
EOF
    echo "== $what: smoke run on examples/minimal"
    cp -R "$root/examples/minimal" "$suite"
    rm -rf "$suite/.simscope"
    (
        cd "$suite"
        "$venv/bin/python" -m pytest -p no:cacheprovider | tee "$work/smoke-$what.log"
        grep -q "simscope: 3 jobs (2 pass, 0 fail, 1 skip) of minimal/1 queued in" \
            "$work/smoke-$what.log"
        "$venv/bin/pytest-simscope" check .simscope/queue
    )
}

smoke wheel "$wheel"
smoke sdist "$sdist"
echo "check_build: the wheel and the sdist build, install and pass the smoke run"
