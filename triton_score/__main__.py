from triton_score.cli.main import main

raise SystemExit(main())
