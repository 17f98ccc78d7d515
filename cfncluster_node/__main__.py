from cfncluster_node.cli import main

raise SystemExit(main())
