// The knowledge tab: upload documents, see their indexing status, and which passages answered the last question.
"use strict";

(function () {
  const el = (id) => document.getElementById(id);
  const route = "/v1/knowledge/documents";

  async function message(response) {
    try { return (await response.json()).error.message; } catch (e) { return `HTTP ${response.status}`; }
  }

  async function refresh() {
    const response = await api(route);
    if (!response.ok) { el("kb-status").textContent = await message(response); return []; }
    const docs = (await response.json()).documents;
    const list = el("kb-docs");
    list.replaceChildren();
    for (const doc of docs) {
      const li = document.createElement("li");
      li.dataset.id = doc.id;
      const status = document.createElement("span");
      status.className = "status";
      status.textContent = doc.status === "failed" ? `failed: ${doc.error.message}`
        : `${doc.status}, ${doc.passages} passages`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.addEventListener("click", async () => {
        const r = await api(`${route}/${encodeURIComponent(doc.id)}`, { method: "DELETE" });
        el("kb-status").textContent = r.ok ? `Removed ${doc.title}.` : await message(r);
        refresh();
      });
      li.append(document.createTextNode(doc.title), status, remove);
      list.append(li);
    }
    return docs;
  }

  async function upload(files) {
    let added = 0;
    for (const file of files) {
      const form = new FormData();
      form.append("file", file, file.name);
      const r = await api(route, { method: "POST", body: form });
      if (r.ok) added += 1; else el("kb-status").textContent = `${file.name}: ${await message(r)}`;
    }
    if (added) el("kb-status").textContent = `${added} document(s) added; indexing…`;
    for (let i = 0; i < 600; i++) {  // follow the indexing until every document is ready or failed
      const docs = await refresh();
      if (!docs.some((d) => d.status === "indexing")) break;
      await new Promise((done) => setTimeout(done, 500));
    }
    if (added) el("kb-status").textContent = "Indexed.";
  }

  async function passageText(docId, passageId) {
    const r = await api(`${route}/${encodeURIComponent(docId)}/passages`);
    if (!r.ok) return null;
    const found = (await r.json()).passages.find((p) => p.id === passageId);
    return found ? found.text : null;
  }

  window.showKnowledge = async function (job) {
    const used = ((job.results || {}).llm || {}).knowledge;
    const outcome = el("kb-outcome");
    const list = el("kb-used");
    list.replaceChildren();
    if (!used) { outcome.textContent = "The last answer did not use the knowledge base."; return; }
    const said = { grounded: "Answered from these passages:", not_found: "Nothing relevant found: the bot offered a transfer.",
                   small_talk: "Small talk: no passages needed.", guarded: "Stopped at a figure no passage gave; these were in the prompt:",
                   contradicted: "The model said yes where a passage says no; the passage's sentence was said instead:" };
    outcome.textContent = said[used.outcome] || used.outcome;
    for (const p of used.passages || []) {
      const li = document.createElement("li");
      li.textContent = `${p.title} (${p.passage_id})`;
      const quote = document.createElement("blockquote");
      quote.textContent = (await passageText(p.document_id, p.passage_id)) || "(no longer in the knowledge base)";
      li.append(quote);
      list.append(li);
    }
  };

  el("kb-files").addEventListener("change", (e) => { upload([...e.target.files]); e.target.value = ""; });
  el("knowledge-box").addEventListener("toggle", () => { if (el("knowledge-box").open) refresh(); });
})();
