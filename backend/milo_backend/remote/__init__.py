"""Jobs on other machines through Ray: `transfer` (folders both ways, no Ray), `worker` (the actor that runs
the backend's command line on a node), `client` (connect, check, run one job) and `batch` (many scenes)."""
