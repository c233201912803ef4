from segloop.cli import main

raise SystemExit(main())
