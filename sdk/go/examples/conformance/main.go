// The conformance agent (sdk/CONFORMANCE.md): the host test tests/host/sdk.rs runs it in a
// real sandbox and reads the lines it prints.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"nanoclaw.dev/agent"
)

func say(format string, args ...interface{}) {
	fmt.Println("conformance: " + fmt.Sprintf(format, args...))
}

func fail(what string, err error) {
	say("%s failed: %v", what, err)
	os.Exit(1)
}

// refusal prints the error a call must fail with: `error <code>: <reason>`.
func refusal(err error, want error) {
	var e *agent.Error
	switch {
	case err == nil:
		say("unexpected success")
	case errors.As(err, &e) && errors.Is(err, want):
		say("error %s: %s", e.Code, e.Reason)
	default:
		say("unexpected error %v", err)
	}
}

// tcp connects to 127.0.0.1:port: ok, denied (EPERM or EACCES) or error <text>.
func tcp(port int) string {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 3*time.Second)
	switch {
	case err == nil:
		c.Close()
		return "ok"
	case errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES):
		return "denied"
	default:
		return "error " + err.Error()
	}
}

func orNone(v interface{}, ok bool) string {
	if !ok {
		return "none"
	}
	return fmt.Sprint(v)
}

func main() {
	lang := os.Getenv("LANG_NAME")
	if lang == "" {
		lang = "go"
	}
	peer := os.Getenv("PEER")
	if peer == "" {
		peer = "hub"
	}

	// 1-2
	c, err := agent.Connect("")
	if err != nil {
		fail("connect", err)
	}
	h := c.Hello()
	say("hello agent=%s heartbeat_s=%s", h.Agent, orNone(h.HeartbeatS, h.HeartbeatS > 0))
	hb := c.StartHeartbeat(0, "")

	// 3
	cfg, err := c.Config()
	if err != nil {
		fail("config", err)
	}
	var send, recv []string
	for _, ch := range cfg.Channels.Send {
		send = append(send, ch.To+"/"+ch.Topic)
	}
	for _, ch := range cfg.Channels.Receive {
		recv = append(recv, ch.From+"/"+ch.Topic)
	}
	var budget interface{}
	if cfg.Energy != nil {
		budget = cfg.Energy.BudgetMwh
	}
	var runtime interface{}
	if cfg.Runtime != nil {
		runtime = *cfg.Runtime
	}
	say("config memory_bytes=%d send=%s receive=%s energy_budget_mwh=%s runtime=%s",
		cfg.MemoryBytes, strings.Join(send, ","), strings.Join(recv, ","),
		orNone(budget, cfg.Energy != nil), orNone(runtime, cfg.Runtime != nil))

	// 4-7
	seq, err := c.OutboxPut("telemetry", map[string]interface{}{"lang": lang, "n": 1})
	if err != nil {
		fail("outbox_put", err)
	}
	say("outbox seq=%d", seq)
	_, err = c.OutboxPut("Bad Topic", 1)
	refusal(err, agent.ErrBadRequest)
	_, err = c.Send(peer, "secrets", "x")
	refusal(err, agent.ErrDenied)
	sent, err := c.Send(peer, "readings", map[string]interface{}{"lang": lang})
	if err != nil {
		fail("send", err)
	}
	var queued interface{}
	if sent.Queued != nil {
		queued = *sent.Queued
	}
	say("send delivered=%d queued=%s", sent.Delivered, orNone(queued, sent.Queued != nil))

	// 8
	say("ready")
	m, err := c.Receive(60 * time.Second)
	if err != nil {
		fail("receive", err)
	}
	if m == nil {
		fail("receive", errors.New("no message in 60 s"))
	}
	say("message from=%s topic=%s", m.From, m.Topic)
	var data struct {
		Token     json.RawMessage `json:"token"`
		Port      int             `json:"port"`
		OtherPort int             `json:"other_port"`
	}
	if err := json.Unmarshal(m.Data, &data); err != nil {
		fail("message data", err)
	}

	// 9-11
	g, err := c.RequestCapability(data.Token)
	if err != nil {
		fail("request_capability", err)
	}
	say("grant capability=%s not_after=%d", g.Capability, g.NotAfter)
	say("connect granted %s", tcp(data.Port))
	say("connect other %s", tcp(data.OtherPort))
	_, err = c.RequestCapability(data.Token)
	refusal(err, agent.ErrDenied)

	// 12
	for time.Now().Unix() <= g.NotAfter+2 {
		time.Sleep(200 * time.Millisecond)
	}
	say("connect expired %s", tcp(data.Port))

	// 13
	hb.Stop()
	say("heartbeat stopped")
	for {
		time.Sleep(time.Hour)
	}
}
