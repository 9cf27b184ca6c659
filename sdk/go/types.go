package agent

import "encoding/json"

// Hello is the supervisor's answer to hello, said on every (re)connection.
type Hello struct {
	Agent    string `json:"agent"`
	Version  string `json:"version"`
	DeviceID string `json:"device_id"`
	Protocol int    `json:"protocol"`
	// HeartbeatS is the manifest's health.heartbeat_s; 0 when it promises none.
	HeartbeatS int `json:"heartbeat_s"`
}

// Whoami is the agent as the supervisor sees it.
type Whoami struct {
	Agent         string `json:"agent"`
	Version       string `json:"version"`
	UID           uint32 `json:"uid"`
	DeviceID      string `json:"device_id"`
	State         string `json:"state"`
	Trust         int    `json:"trust"` // 0–100
	PolicyVersion uint64 `json:"policy_version"`
}

// Config is the agent's effective grant and budgets.
type Config struct {
	MemoryBytes   uint64   `json:"memory_bytes"`
	Cpus          float64  `json:"cpus"`
	Pids          uint64   `json:"pids"`
	ScratchBytes  uint64   `json:"scratch_bytes"`
	Network       []string `json:"network"`
	Grantable     []string `json:"grantable"`
	Grants        []Grant  `json:"grants"`
	Channels      Channels `json:"channels"`
	HeartbeatS    int      `json:"heartbeat_s"` // 0 when the manifest promises no heartbeat
	PolicyVersion uint64   `json:"policy_version"`
	Energy        *Energy  `json:"energy"`  // nil without an energy budget
	Runtime       *string  `json:"runtime"` // the runtime layer's name, nil without one
}

// Channels are the policy's channels from and to this agent, in the policy's order.
type Channels struct {
	Send    []SendChannel    `json:"send"`
	Receive []ReceiveChannel `json:"receive"`
}

// SendChannel is a channel this agent may send along (Topic "*" for any).
type SendChannel struct {
	To    string `json:"to"`
	Topic string `json:"topic"`
}

// ReceiveChannel is a channel other agents may send to this agent along.
type ReceiveChannel struct {
	From  string `json:"from"`
	Topic string `json:"topic"`
}

// Energy is the agent's energy budget and what it used in the current window.
type Energy struct {
	BudgetMwh uint64  `json:"budget_mwh"`
	WindowS   uint64  `json:"window_s"`
	UsedMwh   float64 `json:"used_mwh"`
}

// Grant is a capability held until NotAfter (seconds since the epoch).
type Grant struct {
	Capability string `json:"capability"`
	NotAfter   int64  `json:"not_after"`
}

// Sent says where a message went: Delivered connections, or Queued (its place in the
// receiver's queue) when the receiver had none.
type Sent struct {
	Delivered int  `json:"delivered"`
	Queued    *int `json:"queued"`
}

// Message is a message from another agent along a declared channel.
type Message struct {
	From  string          `json:"from"`
	Topic string          `json:"topic"`
	Data  json.RawMessage `json:"data"`
}
