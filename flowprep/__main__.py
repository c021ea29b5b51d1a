from flowprep.cli import main

raise SystemExit(main())
