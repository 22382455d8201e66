// The console's side of the admin API: every request carries the admin token in the
// `Authorization` header, and actions name the operator for the audit log. The live feed
// is Server-Sent Events read through fetch(), since EventSource cannot send a header.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export class Api {
  constructor(token, operator) {
    this.token = token;
    this.operator = operator;
  }

  headers(json) {
    const headers = { Authorization: `Bearer ${this.token}` };
    if (this.operator) headers["X-Pkd-Operator"] = this.operator;
    if (json) headers["Content-Type"] = "application/json";
    return headers;
  }

  async request(method, path, body) {
    const answer = await fetch(path, {
      method,
      headers: this.headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    const text = await answer.text();
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = null;
    }
    if (!answer.ok) {
      throw new ApiError(answer.status, parsed?.error ?? (text || answer.statusText));
    }
    return parsed;
  }

  get(path) {
    return this.request("GET", path);
  }

  post(path, body) {
    return this.request("POST", path, body ?? {});
  }

  /**
   * Reads the live feed until it ends or `signal` aborts, calling `onEvent(name, data)`
   * for each event. Throws an ApiError on a refusal (401), another error when the
   * connection fails.
   */
  async stream(onEvent, signal) {
    const answer = await fetch("/admin/events", { headers: this.headers(false), signal, cache: "no-store" });
    if (!answer.ok) throw new ApiError(answer.status, `the live feed answered ${answer.status}`);
    const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length > 0) onEvent(name, JSON.parse(data.join("\n")));
      }
    }
  }
}
