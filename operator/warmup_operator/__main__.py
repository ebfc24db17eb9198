from warmup_operator.main import main

raise SystemExit(main())
