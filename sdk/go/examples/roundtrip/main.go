// The round trip program (sdk/CONFORMANCE.md): the latency of one heartbeat call as the
// SDK's caller sees it, over 90 calls (inside the socket's burst of 100).
package main

import (
	"fmt"
	"os"
	"sort"
	"time"

	"nanoclaw.dev/agent"
)

const n = 90

func main() {
	lang := os.Getenv("LANG_NAME")
	if lang == "" {
		lang = "go"
	}
	c, err := agent.Connect("")
	if err != nil {
		fmt.Fprintln(os.Stderr, "roundtrip:", err)
		os.Exit(1)
	}
	defer c.Close()
	us := make([]int64, 0, n)
	var total int64
	for i := 0; i < n; i++ {
		t := time.Now()
		if _, err := c.Heartbeat(""); err != nil {
			fmt.Fprintln(os.Stderr, "roundtrip:", err)
			os.Exit(1)
		}
		d := time.Since(t).Microseconds()
		us = append(us, d)
		total += d
	}
	sort.Slice(us, func(i, j int) bool { return us[i] < us[j] })
	// Nearest rank: the smallest value with at least p of the samples at or below it.
	rank := func(p int) int64 { return us[(p*n+99)/100-1] }
	fmt.Printf("roundtrip lang=%s n=%d p50_us=%d p99_us=%d mean_us=%d\n",
		lang, n, rank(50), rank(99), total/n)
}
