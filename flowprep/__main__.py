from flowprep.cli.main import main

raise SystemExit(main())
