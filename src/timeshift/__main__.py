from timeshift.cli import main

raise SystemExit(main())
