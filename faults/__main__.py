from faults.run import main

raise SystemExit(main())
