// A 1/KP endpoint on MQTT.js over WebSocket, as KaaIoT's Node examples are built.
// Usage: node kp_ws_client.js <ws-url> <app version> <token> [<user> <password>]
// Sends one data sample with a request ID, prints the outcome, then answers every command
// the server pushes (it never subscribes: pushes arrive anyway) until it has answered one.
// Every event is one JSON line on stdout; the test reads them.
"use strict";
const mqtt = require("mqtt");

const [url, avn, token, username, password] = process.argv.slice(2);
const say = (event) => console.log(JSON.stringify(event));
const client = mqtt.connect(url, {
  protocolVersion: 4,
  clean: true,
  clientId: `mqttjs-${token}`,
  username,
  password,
  reconnectPeriod: 0,
  connectTimeout: 10000,
});
const base = `kp1/${avn}`;
const dataTopic = `${base}/dcx/${token}/json/1`;

client.on("connect", () => {
  say({ event: "connected" });
  client.publish(dataTopic, JSON.stringify([{ temperature: 21.5, humidity: 40 }]), { qos: 1 });
});

client.on("message", (topic, payload) => {
  if (topic.startsWith(`${dataTopic}/`)) {
    say({ event: "reply", topic, payload: payload.toString() });
    return;
  }
  const m = topic.match(new RegExp(`^${base}/cex/${token}/command/([^/]+)/status$`));
  if (m) {
    const commands = JSON.parse(payload.toString());
    say({ event: "command", type: m[1], commands });
    const results = commands.map((c) => ({ id: c.id, statusCode: 200, reasonPhrase: "done", payload: { echo: c.payload } }));
    client.publish(`${base}/cex/${token}/result/${m[1]}/7`, JSON.stringify(results), { qos: 1 });
    return;
  }
  if (topic === `${base}/cex/${token}/result/reboot/7/status`) {
    say({ event: "result-accepted" });
    client.end(false, () => process.exit(0));
    return;
  }
  say({ event: "other", topic, payload: payload.toString() });
});

client.on("error", (e) => {
  say({ event: "error", message: String(e.message || e) });
  process.exit(2);
});
setTimeout(() => {
  say({ event: "timeout" });
  process.exit(3);
}, 30000);
