module airlock.dev/sdk

go 1.22
