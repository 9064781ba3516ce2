# Sourced by test.sh and mini.sh: create .venv, install requirements.txt and the project itself
# (editable, so its packages import from anywhere without path settings) when the environment
# is missing or requirements.txt / pyproject.toml changed, then put .venv first on PATH.
PYTHON_BIN=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv from requirements.txt (the first time takes a few minutes)..."
  "$PYTHON_BIN" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  .venv/bin/python -m pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
