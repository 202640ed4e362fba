from bench.accounts.run import main

raise SystemExit(main())
