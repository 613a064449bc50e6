// What the modules of the page share: who the token is, the API's config, the open timeline.
export const state = { who: null, config: null, timeline: null };
