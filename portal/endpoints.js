// The consumer's endpoints: the list with health, the create and edit form, and one endpoint's
// page with its actions and delivery log.

import { h, newId, when, confirmAction } from './dom.js';
import { createChoices, headersEditor, showCredentials, optionFacts } from './options.js';

const FAILED = new Set(['exhausted', 'failed', 'dropped']);
const ROTATE = { v1: 'Rotate secret', v1a: 'Rotate key', 'v1,v1a': 'Rotate secret and key' };

function statusBadge(sub) {
  if (sub.status === 'active') return h('span', { class: 'badge ok' }, 'Active');
  const why = { manual: 'by you', gone: 'the receiver answered 410 Gone', failing: 'it kept failing' }[sub.disabled_reason];
  return h('span', { class: 'badge off' }, why ? `Disabled (${why})` : 'Disabled');
}

function healthText(health) {
  if (!health) return '—';
  const parts = [];
  if (health.failing_since) {
    parts.push(h('span', { class: 'bad' }, 'Failing since ', when(health.failing_since),
      ` (${health.consecutive_failures} in a row)`));
  } else if (health.last_success_at) {
    parts.push(h('span', {}, 'Last delivered ', when(health.last_success_at)));
  } else {
    parts.push('No deliveries yet');
  }
  if (health.pending) parts.push(h('span', {}, `, ${health.pending} pending`));
  return parts;
}

export async function listScreen(app) {
  const list = await app.api('GET', '/subscriptions?limit=1000');
  const rows = list.data.map((sub) =>
    h('tr', { 'data-id': sub.id },
      h('td', {}, h('a', { href: `#/endpoints/${sub.id}` }, sub.description || sub.url),
        sub.description ? h('div', { class: 'hint' }, sub.url) : null),
      h('td', {}, sub.events.join(', ')),
      h('td', {}, statusBadge(sub)),
      h('td', {}, healthText(sub.health))));
  return h('section', {},
    h('div', { class: 'heading' }, h('h1', {}, 'Endpoints'), h('a', { class: 'button', href: '#/new' }, 'Add endpoint')),
    list.has_more ? h('p', { class: 'hint' }, 'Showing the first 1000 endpoints.') : null,
    rows.length === 0
      ? h('p', { id: 'empty' }, 'No endpoints yet. Add one to start receiving webhooks.')
      : h('table', { id: 'endpoints' },
        h('caption', { class: 'visually-hidden' }, 'Your endpoints'),
        h('thead', {}, h('tr', {}, ['Endpoint', 'Events', 'Status', 'Health'].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, rows)));
}

/** The events fieldset: a checkbox per catalog type, `*`, and free filters (`order.*`). */
function eventPicker(catalog, chosen) {
  const types = catalog.data.filter((t) => t.type !== 'webhook.test');
  const known = types.map((t) => t.type);
  const boxes = [{ type: '*' }, ...types].map(({ type, description }) => {
    const id = newId('event');
    return h('div', { class: 'check' },
      h('input', { type: 'checkbox', id, name: 'event', value: type, checked: chosen.includes(type) }),
      h('label', { for: id }, type === '*' ? 'All events' : h('code', {}, type),
        description ? h('span', { class: 'hint' }, ` — ${description}`) : null));
  });
  const otherId = newId('other');
  const other = chosen.filter((t) => t !== '*' && !known.includes(t)).join(', ');
  return h('fieldset', {},
    h('legend', {}, 'Events to receive'),
    boxes,
    h('label', { for: otherId }, 'Other event filters'),
    h('input', { id: otherId, name: 'other', value: other, 'aria-describedby': `${otherId}-hint` }),
    h('p', { class: 'hint', id: `${otherId}-hint` }, 'Comma-separated, e.g. order.* for every order event.'));
}

function readEvents(form) {
  const picked = [...form.querySelectorAll('input[name="event"]:checked')].map((b) => b.value);
  const other = form.elements.other.value.split(',').map((s) => s.trim()).filter(Boolean);
  return [...picked, ...other];
}

/** The create and edit form (`extra`: more fieldsets); `submit` gets the fields and does the call. */
function endpointForm(app, catalog, sub, submitLabel, submit, extra) {
  const urlId = newId('url');
  const descId = newId('description');
  const form = h('form', { class: 'form', novalidate: true },
    h('label', { for: urlId }, 'Endpoint URL'),
    h('input', { id: urlId, name: 'url', type: 'url', required: true, value: sub.url || '', placeholder: 'https://example.com/webhooks', autocomplete: 'url' }),
    h('label', { for: descId }, 'Description (optional)'),
    h('input', { id: descId, name: 'description', value: sub.description || '' }),
    eventPicker(catalog, sub.events || []),
    extra,
    h('div', { class: 'actions' },
      h('button', { type: 'submit', class: 'primary' }, submitLabel),
      h('a', { class: 'button', href: sub.id ? `#/endpoints/${sub.id}` : '#/' }, 'Cancel')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const events = readEvents(form);
    if (!form.elements.url.value.trim()) return app.fail({ text: 'Please enter the endpoint URL.' });
    if (events.length === 0) return app.fail({ text: 'Please choose at least one event.' });
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    try {
      await submit({ url: form.elements.url.value.trim(), description: form.elements.description.value, events }, form);
    } catch (error) {
      app.fail(error);
    } finally {
      button.disabled = false;
    }
    return undefined;
  });
  return form;
}

export async function createScreen(app) {
  const catalog = await app.catalog();
  const headers = headersEditor('Receiver headers (optional)',
    'Sent with every delivery, e.g. your receiver\'s own authorization token. Values are shown only once created.');
  return h('section', {},
    h('h1', {}, 'Add an endpoint'),
    endpointForm(app, catalog, { events: [] }, 'Create endpoint', async (fields, form) => {
      const chosen = {
        signature_scheme: form.elements.scheme.value,
        ordering: form.elements.ordering.value,
        headers: headers.read(),
      };
      if (!Object.keys(chosen.headers).length) delete chosen.headers;
      const created = await app.api('POST', '/subscriptions', { ...fields, ...chosen });
      await showCredentials('Endpoint created', created);
      app.go(`#/endpoints/${created.id}`);
    }, [...createChoices(), headers.node]));
}

/** Replaces the receiver headers (write-only), or removes them all. */
export async function headersScreen(app, id) {
  const sub = await app.api('GET', `/subscriptions/${id}`);
  const path = `/subscriptions/${id}`;
  const editor = headersEditor('New receiver headers',
    'Saving replaces every header: enter all that your receiver needs. Values are never shown again, here or anywhere.');
  editor.addRow();
  const replace = async (headers, said) => {
    try {
      await app.api('PATCH', path, { headers });
      app.say(said);
      app.go(`#/endpoints/${id}`);
    } catch (error) {
      app.fail(error);
    }
  };
  const form = h('form', { class: 'form', novalidate: true },
    editor.node,
    h('div', { class: 'actions' },
      h('button', { type: 'submit', class: 'primary' }, 'Replace headers'),
      sub.header_names.length ? h('button', {
        type: 'button',
        class: 'danger',
        onclick: async () => {
          const ok = await confirmAction('Remove every receiver header?',
            `Deliveries to ${sub.url} are sent without ${sub.header_names.join(', ')} from now on.`, 'Remove headers');
          if (ok) await replace({}, 'Receiver headers removed.');
        },
      }, 'Remove all headers') : null,
      h('a', { class: 'button', href: `#/endpoints/${id}` }, 'Cancel')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const headers = editor.read();
      if (!Object.keys(headers).length) return app.fail({ text: 'Please enter at least one header, or remove them all.' });
      await replace(headers, 'Receiver headers replaced.');
    } catch (error) {
      app.fail(error);
    }
    return undefined;
  });
  return h('section', {},
    h('h1', {}, 'Receiver headers'),
    h('p', {}, 'Sent now with every delivery to ', h('code', {}, sub.url), ': ',
      h('span', { id: 'current-headers' }, sub.header_names.length ? sub.header_names.join(', ') : 'none'), '.'),
    form);
}

export async function editScreen(app, id) {
  const [sub, catalog] = await Promise.all([app.api('GET', `/subscriptions/${id}`), app.catalog()]);
  return h('section', {},
    h('h1', {}, 'Change endpoint'),
    endpointForm(app, catalog, sub, 'Save changes', async (fields) => {
      await app.api('PATCH', `/subscriptions/${id}`, fields);
      app.say('Endpoint saved.');
      app.go(`#/endpoints/${id}`);
    }));
}

/** Runs a write from a button: the API's refusal goes to the banner, success re-renders. */
function action(app, label, run, cls) {
  return h('button', {
    type: 'button',
    class: cls || '',
    onclick: async (event) => {
      const button = event.currentTarget;
      button.disabled = true;
      try {
        const said = await run();
        if (said !== false) {
          app.say(said || `${label}: done.`);
          app.go(location.hash);
        }
      } catch (error) {
        app.fail(error);
      } finally {
        button.disabled = false;
      }
    },
  }, label);
}

function facts(sub) {
  const row = (term, value) => [h('dt', {}, term), h('dd', {}, value)];
  return h('dl', { class: 'facts' },
    row('URL', h('code', { id: 'endpoint-url' }, sub.url)),
    row('Status', statusBadge(sub)),
    row('Events', h('span', { id: 'endpoint-events' }, sub.events.join(', '))),
    row('Health', healthText(sub.health)),
    optionFacts(sub, row),
    row('Created', when(sub.created_at)),
    row('Changed', when(sub.updated_at)),
    row('Id', h('code', {}, sub.id)));
}

function actions(app, sub) {
  if (sub.static) return h('p', { class: 'hint' }, 'This endpoint is set up by the provider: it cannot be changed here.');
  const path = `/subscriptions/${sub.id}`;
  const enabled = sub.status === 'active';
  return h('div', { class: 'actions', role: 'group', 'aria-label': 'Endpoint actions' },
    h('a', { class: 'button', href: `#/endpoints/${sub.id}/edit` }, 'Edit'),
    h('a', { class: 'button', href: `#/endpoints/${sub.id}/headers` }, 'Receiver headers'),
    action(app, 'Send test event', async () => {
      await app.api('POST', `${path}/test`);
      return 'A test event was queued; it appears in the delivery log once attempted.';
    }),
    action(app, enabled ? 'Disable' : 'Enable', async () => {
      await app.api('PATCH', path, { status: enabled ? 'disabled' : 'active' });
      return enabled ? 'Endpoint disabled.' : 'Endpoint enabled.';
    }),
    action(app, ROTATE[sub.signature_scheme] || ROTATE.v1, async () => {
      const what = sub.signature_scheme === 'v1a' ? 'key' : 'secret';
      const ok = await confirmAction(`${ROTATE[sub.signature_scheme] || ROTATE.v1}?`,
        `A new ${what} is made; the old one keeps signing beside it for 24 hours, so you can switch over.`, 'Rotate');
      if (!ok) return false;
      const rotated = await app.api('POST', `${path}/rotate-secret`);
      await showCredentials(what === 'key' ? 'New public key' : 'New signing secret', rotated);
      return 'Rotated.';
    }),
    action(app, 'Delete', async () => {
      const ok = await confirmAction('Delete this endpoint?',
        `Deliveries to ${sub.url} stop at once. This cannot be undone.`, 'Delete endpoint');
      if (!ok) return false;
      await app.api('DELETE', path);
      app.say('Endpoint deleted.');
      app.go('#/');
      return false;
    }, 'danger'));
}

function recoverForm(app, sub) {
  const sinceId = newId('since');
  const result = h('p', { class: 'hint', 'aria-live': 'polite', id: 'recover-result' });
  const form = h('form', { class: 'form inline' },
    h('label', { for: sinceId }, 'Failed since'),
    h('input', { id: sinceId, name: 'since', type: 'datetime-local', required: true }),
    h('button', { type: 'submit' }, 'Recover failed messages'),
    result);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const since = new Date(form.elements.since.value);
    if (Number.isNaN(since.getTime())) return app.fail({ text: 'Please enter a date and time.' });
    try {
      const answer = await app.api('POST', `/subscriptions/${sub.id}/recover`, { since: since.toISOString() });
      result.textContent = `${answer.count} message(s) will be sent again`
        + (answer.not_kept ? `; ${answer.not_kept} were no longer kept.` : '.');
    } catch (error) {
      app.fail(error);
    }
    return undefined;
  });
  return form;
}

function attemptRow(app, attempt) {
  const outcome = attempt.response_status !== null
    ? `HTTP ${attempt.response_status}`
    : (attempt.error || '—');
  return h('tr', { 'data-state': attempt.state, 'data-webhook-id': attempt.webhook_id },
    h('td', {}, when(attempt.timestamp)),
    h('td', {}, h('code', {}, attempt.event_type), h('div', { class: 'hint' }, attempt.webhook_id)),
    h('td', {}, String(attempt.attempt)),
    h('td', {}, h('span', { class: attempt.state === 'succeeded' ? 'ok' : 'bad' }, attempt.state)),
    h('td', { class: 'outcome' }, outcome),
    h('td', {}, `${attempt.duration_ms} ms`),
    h('td', {}, when(attempt.next_retry_at)),
    h('td', {}, FAILED.has(attempt.state)
      ? action(app, 'Retry', async () => {
        await app.api('POST', `/deliveries/${attempt.webhook_id}/retry`);
        return `Message ${attempt.webhook_id} will be sent again.`;
      })
      : ''));
}

function deliveryLog(app, sub, log) {
  const onlyId = newId('only-failed');
  const body = h('tbody', {});
  const fill = (onlyFailed) => {
    const shown = log.data.filter((a) => !onlyFailed || a.state !== 'succeeded');
    body.replaceChildren(...(shown.length
      ? shown.map((a) => attemptRow(app, a))
      : [h('tr', {}, h('td', { colspan: '8' }, onlyFailed ? 'No failed deliveries.' : 'No deliveries yet.'))]));
  };
  fill(false);
  return h('section', { 'aria-labelledby': 'log-title' },
    h('div', { class: 'heading' },
      h('h2', { id: 'log-title' }, 'Delivery log'),
      h('div', { class: 'check' },
        h('input', { type: 'checkbox', id: onlyId, onchange: (e) => fill(e.currentTarget.checked) }),
        h('label', { for: onlyId }, 'Only failed deliveries')),
      h('button', { type: 'button', id: 'refresh', onclick: () => app.go(location.hash) }, 'Refresh')),
    h('table', { id: 'log' },
      h('caption', { class: 'visually-hidden' }, 'Latest delivery attempts, newest first'),
      h('thead', {}, h('tr', {}, ['Time', 'Event', 'Attempt', 'State', 'Response or error', 'Duration', 'Next retry', ''].map((c) =>
        h('th', { scope: 'col' }, c || h('span', { class: 'visually-hidden' }, 'Actions'))))),
      body));
}

export async function endpointScreen(app, id) {
  const [sub, log] = await Promise.all([
    app.api('GET', `/subscriptions/${id}`),
    app.api('GET', `/subscriptions/${id}/deliveries`),
  ]);
  return h('section', { 'data-id': sub.id },
    h('h1', {}, sub.description || 'Endpoint'),
    facts(sub),
    actions(app, sub),
    sub.static ? null : h('section', { 'aria-labelledby': 'recover-title' },
      h('h2', { id: 'recover-title' }, 'Recover failed messages'),
      h('p', { class: 'hint' }, 'Sends again every failed message of this endpoint since a time, if still kept.'),
      recoverForm(app, sub)),
    deliveryLog(app, sub, log));
}

