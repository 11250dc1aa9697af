from milo_backend.cli import main

raise SystemExit(main())
