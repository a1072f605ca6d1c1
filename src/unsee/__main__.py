"""``python -m unsee`` runs the command line, as ``unsee`` does (handy where the script is not on PATH)."""

from __future__ import annotations

import sys

from unsee.cli import main

sys.exit(main())
