module nanoclaw.dev/agent

go 1.19
