from ares.cli import main

raise SystemExit(main())
