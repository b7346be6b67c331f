from s3feed.daemon.cli import main

raise SystemExit(main())
