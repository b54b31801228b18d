from fnn_fast.cli import main

raise SystemExit(main())
