from triton_score.cli import main

raise SystemExit(main())
