// The session and the subscription API: every call sends the token as `x-webhooks-session`,
// and every refusal becomes an ApiError whose `text` a person can read.

const KEY = 'proxy-webhooks.session';
const meta = document.querySelector('meta[name="pw-prefix"]');
export const PREFIX = meta ? meta.content : '/webhooks';

/** Takes `#token=pws_...` from the address bar into sessionStorage, and out of the bar. */
export function adoptToken() {
  const match = /(?:^#|&)token=(pws_[A-Za-z0-9_.-]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(KEY, match[1]);
    // What the link asked for besides the token (`#/endpoints/sub_...&token=...`) stays.
    const rest = location.hash.replace(/[#&]?token=pws_[A-Za-z0-9_.-]+/, '').replace(/^#?/, '#');
    history.replaceState(null, '', location.pathname + location.search + (rest.length > 1 ? rest : '#/'));
  }
  return sessionStorage.getItem(KEY);
}

/** What the token says of itself (display only: the server decides). */
export function claims(token) {
  try {
    const body = token.slice(4).split('.')[0].replace(/-/g, '+').replace(/_/g, '/');
    const c = JSON.parse(atob(body + '='.repeat((4 - (body.length % 4)) % 4)));
    return { consumer: String(c.c), expires: new Date(c.x * 1000), readOnly: c.r === true };
  } catch {
    return null;
  }
}

export class ApiError extends Error {
  constructor(status, code, text, sessionEnded) {
    super(text);
    this.status = status;
    this.code = code;
    this.text = text;
    this.sessionEnded = sessionEnded;
  }
}

const SESSION_TEXT = {
  session_expired: 'Your portal session has expired. Ask for a new link to continue.',
  session_revoked: 'Your portal session was revoked. Ask for a new link to continue.',
  session_invalid: 'This portal link is not valid. Check that you copied all of it, or ask for a new one.',
};

/** The plain-words text for an API refusal. */
export function describe(status, code, message, retryAfter) {
  const wait = retryAfter ? ` Try again in ${retryAfter} second${retryAfter === '1' ? '' : 's'}.` : ' Try again shortly.';
  if (status === 401) {
    return SESSION_TEXT[code] || 'You are not signed in to the portal. Open the portal link you were given.';
  }
  if (status === 403 && code === 'read_only') {
    return 'This session is read-only: you can look at everything, but not change anything.';
  }
  if (status === 403) return `You are not allowed to do that. ${message}`;
  if (status === 404) return `Not found: it may have been deleted. (${message})`;
  if (status === 409) return `That conflicts with the current state: ${message}`;
  if (status === 413) return `That is too large: ${message}`;
  if (status === 400 || status === 422) return `Please correct this: ${message}`;
  if (status === 429) return `Too many requests.${wait}`;
  if (status === 503) return `The service is temporarily unavailable.${wait}`;
  if (status >= 500) return `The server failed (${status}).${wait}`;
  return `The request was refused (${status}): ${message}`;
}

/** Calls the API; resolves to the JSON answer (null for 204), rejects with an ApiError. */
export async function call(token, method, path, body) {
  // Without a token the gateway may authenticate the browser itself (api.consumer_header).
  const headers = token ? { 'x-webhooks-session': token } : {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  let response;
  try {
    response = await fetch(PREFIX + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch {
    throw new ApiError(0, 'network', 'The server could not be reached. Check your connection and try again.', false);
  }
  if (response.status === 204) return null;
  let json = null;
  try {
    json = await response.json();
  } catch {
    json = null;
  }
  if (response.ok) return json;
  const err = (json && json.error) || {};
  const code = err.code || '';
  const text = describe(response.status, code, err.message || response.statusText, response.headers.get('retry-after'));
  throw new ApiError(response.status, code, text, response.status === 401);
}
