from score.cli import main

raise SystemExit(main())
