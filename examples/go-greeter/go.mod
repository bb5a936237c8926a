module example.invalid/airlock/go-greeter

go 1.22
