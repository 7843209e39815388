"""``python -m scssl`` (and ``torchrun -m scssl``) run the command line."""

from scssl.cli import main

raise SystemExit(main())
